"""The model families: ``models.<name>.family`` names one.

Each family is a folder: ``params.py`` (its params model, plain pydantic with no torch, which the config
imports), ``process.py`` (its noise process and how it is built from the params) and, where the family
samples in its own way, ``samplers.py``. Registries list them, one line per family each:
:mod:`.params` (the params union that ``models.<name>`` validates against; config imports it),
:mod:`.registry` (the process builders; the runtime imports it) and :mod:`.samplers` (the families' own
samplers, which a process imports only when asked for one; the sample stage imports them all). A
process shows samplers, guidance, inverse problems and the likelihoods one face
(:class:`diffusionlab.core.process.Process`).
"""
