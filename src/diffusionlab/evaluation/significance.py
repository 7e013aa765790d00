"""Scores over independent draws: mean and spread, and Welch's test of whether two differ beyond the noise.

A score of a model is the mean over ``sample.draws`` independent draws of ``sample.num_samples`` images
each, with the standard deviation over the draws (ddof 1). Two sets of draws differ beyond the noise
when Welch's t-test rejects equal means at ``evaluate.significance``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

SCORES = ("fid", "fid_inf", "isc", "isc_inf", "kid", "precision", "recall")
"""The per-draw scores, in the order the tables show them."""
LOWER_IS_BETTER = {"fid": True, "fid_inf": True, "isc": False, "isc_inf": False, "kid": True, "precision": False,
                   "recall": False, "class_accuracy": False}


@dataclass(frozen=True)
class Spread:
    """A score over independent draws: ``mean`` with standard deviation ``std`` (of one draw), from ``n`` draws.

    ``dof`` is the degrees of freedom of ``std`` (n - 1 for draws; resamples - 1 for a bootstrap estimate,
    where the mean is one draw's value and n is 1)."""

    mean: float
    std: float
    n: int
    dof: int

    @property
    def stderr(self) -> float:
        return self.std / math.sqrt(self.n)

    @classmethod
    def of(cls, values: list[float] | np.ndarray) -> Spread:
        values = np.asarray(values, dtype=float)
        if len(values) < 2:
            raise ValueError("a spread needs at least two draws")
        return cls(float(values.mean()), float(values.std(ddof=1)), len(values), len(values) - 1)


def summarize(per_draw: list[dict[str, float]]) -> dict[str, float | int]:
    """Each score's mean over the draws as ``<score>`` and its standard deviation as ``<score>_std`` (one draw: the
    score alone, no spread)."""
    out: dict[str, float | int] = {}
    for key in per_draw[0]:
        if len(per_draw) == 1:
            out[key] = float(per_draw[0][key])
            continue
        spread = Spread.of([d[key] for d in per_draw])
        out[key], out[f"{key}_std"] = spread.mean, spread.std
    out["draws"] = len(per_draw)
    return out


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def spread_of(summary: dict, key: str) -> Spread | None:
    """The :class:`Spread` of ``key`` in a summary written by :func:`summarize` (or the floor's, or a table row
    holding the same fields), if present."""
    if _missing(summary.get(key)) or _missing(summary.get(f"{key}_std")) or _missing(summary.get("draws", 1)):
        return None
    n = int(summary.get("draws", 1) if summary.get("spread") != "bootstrap" else 1)
    dof = int(summary["resamples"]) - 1 if summary.get("spread") == "bootstrap" else n - 1
    return Spread(float(summary[key]), float(summary[f"{key}_std"]), n, dof)


@dataclass(frozen=True)
class Difference:
    """``a - b`` and Welch's two-sided t-test of equal means."""

    change: float
    stderr: float
    t: float
    dof: float
    p: float
    beyond_noise: bool


def welch(a: Spread, b: Spread, level: float = 0.05) -> Difference:
    """Welch's t-test (unequal variances, Welch-Satterthwaite degrees of freedom) of ``a.mean == b.mean``."""
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    change, stderr = a.mean - b.mean, math.sqrt(va + vb)
    if stderr == 0:
        same = change == 0
        return Difference(change, 0.0, 0.0 if same else math.inf, math.inf, 1.0 if same else 0.0, not same)
    dof = (va + vb) ** 2 / ((va**2 / a.dof if va else 0.0) + (vb**2 / b.dof if vb else 0.0))
    t = change / stderr
    p = float(2 * special.stdtr(dof, -abs(t)))  # Student's t CDF: 2 P(T > |t|), as scipy.stats.t.sf computes it
    return Difference(change, stderr, t, dof, p, p < level)
