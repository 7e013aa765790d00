"""The evaluation layer: feature backends, metrics over draws with their spread, significance tests, likelihoods and the report."""
