"""The families' own samplers, one line per family that samples in its own way.

A process imports its own samplers when asked for one (:meth:`Process.sampler`), so that training neither loads
them nor, in DVC, depends on them; a stage that samples imports this module, which puts them among its deps.
"""

from .ddpm import samplers as ddpm  # noqa: F401
from .vdm import samplers as vdm  # noqa: F401
