"""The configuration layer: params.yaml as typed, validated sections.

:mod:`.sections` holds the sections that concern no model family (torch-free: a stage that reads only
these depends on nothing else); :mod:`.params` adds the dataset and model blocks and checks the sections
against each other (:class:`~.params.Params`, :func:`~.params.load_params`).
"""
