"""The core layer: the protocol every noise process follows, and likelihood math that needs only that protocol."""
