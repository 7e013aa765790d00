"""Compare two experiments score by score: each score's change, both spreads, and whether the change is
beyond the noise (Welch's t-test over the draws).

    python -m diffusionlab.compare BASELINE CANDIDATE

Each side is ``workspace`` (the results in the working tree), a DVC experiment name or any Git revision
(read with ``dvc.api.metrics_show``), or ``mlflow:<run id>`` (the metrics an evaluate stage logged to that
MLflow run). DVC sides are compared for every (dataset, model) both have evaluated; two MLflow runs are
compared with each other, whatever model each holds.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import pandas as pd

from . import paths
from .config.sections import DEFAULT_BUDGET, EvaluateConfig, MlflowConfig
from .errors import EXPECTED_ERRORS, StageInputError
from .evaluation.significance import LOWER_IS_BETTER, SCORES, Spread, spread_of, welch
from .validation import View, read_yaml, validate

COMPARED = (*SCORES, "class_accuracy")
WORKSPACE = "workspace"


class CompareParams(View):
    """What the comparison reads of params.yaml: the test's level and the tracking store."""

    evaluate: EvaluateConfig = EvaluateConfig()
    mlflow: MlflowConfig = MlflowConfig()


def load_params() -> CompareParams:
    return validate(CompareParams, read_yaml("params.yaml"))


@dataclass(frozen=True)
class Side:
    """One experiment's summaries: per (dataset-model, backend), each score's :class:`Spread`."""

    label: str
    scores: dict[tuple[str, str], dict[str, Spread]]
    budgets: dict[str, str] = field(default_factory=dict)
    """Per model (``<dataset>-<model>``, an MLflow run's name), the budget of its dataset block it ran at."""


def _spreads(summary: dict, draws: int | None) -> dict[str, Spread]:
    """The scores of one backend's summary ({score, score_std, draws}) as spreads."""
    n = int(summary.get("draws") or draws or 0)
    if n < 2:
        return {}
    spreads = {key: spread_of({**summary, "draws": n}, key) for key in COMPARED}
    return {key: spread for key, spread in spreads.items() if spread is not None}


def from_metrics(metrics: dict) -> dict[str, dict[str, Spread]]:
    """Per backend, the spreads of an evaluate stage's metrics.json (class accuracy goes with every backend)."""
    extra = {k: metrics[k] for k in ("class_accuracy", "class_accuracy_std") if k in metrics}
    return {backend: _spreads({**summary, **extra}, metrics.get("draws"))
            for backend, summary in metrics.items()
            if isinstance(summary, dict) and any(k in summary for k in SCORES)}


def dvc_side(rev: str) -> Side:
    """The evaluate stage's metrics of every (dataset, model) the pipeline at ``rev`` lists."""
    import dvc.api
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    at = None if rev == WORKSPACE else rev
    try:
        pipeline = dvc.api.params_show("params.yaml", rev=at)["pipeline"]
    except (DvcException, SCMError) as err:
        raise StageInputError(f"'{rev}' is neither a DVC experiment nor a Git revision here ({err}); list the "
                              "experiments with: dvc exp show, or give an MLflow run as mlflow:<run id>") from None
    scores, budgets = {}, {}
    for dataset in pipeline["datasets"]:
        for model in pipeline["models"]:
            target = (paths.evaluate(dataset, model) / "metrics.json").as_posix()
            try:
                metrics = dvc.api.metrics_show(target, rev=at)
            except DvcException:
                continue
            budgets[f"{dataset}-{model}"] = metrics.get("budget", DEFAULT_BUDGET)
            for backend, spreads in from_metrics(metrics).items():
                scores[(f"{dataset}-{model}", backend)] = spreads
    if not scores:
        raise StageInputError(f"'{rev}' holds no evaluated model; run the pipeline there first (dvc exp run)")
    return Side(rev, scores, budgets)


def mlflow_side(run_id: str) -> Side:
    """The scores an evaluate stage logged to MLflow run ``run_id`` (``<backend>.<score>`` metrics)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from .runtime.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(load_params().mlflow))
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException as err:
        raise StageInputError(f"no MLflow run '{run_id}' in {mlflow.get_tracking_uri()}: {err.message}") from None
    logged = run.data.metrics
    backends: dict[str, dict] = {}
    for key, value in logged.items():
        backend, _, name = key.partition(".")
        if name:
            backends.setdefault(backend, {})[name] = value
    for k in ("class_accuracy", "class_accuracy_std"):
        if k in logged:
            for summary in backends.values():
                summary[k] = logged[k]
    name = run.data.tags.get("mlflow.runName", run_id)
    scores = {(name, b): s for b, summary in backends.items() if (s := _spreads(summary, None))}
    if not scores:
        raise StageInputError(f"MLflow run {run_id} ({name}) holds no evaluated scores; run its evaluate stage")
    return Side(f"mlflow:{run_id}", scores, {name: run.data.tags.get("budget", DEFAULT_BUDGET)})


def load_side(spec: str) -> Side:
    return mlflow_side(spec.removeprefix("mlflow:")) if spec.startswith("mlflow:") else dvc_side(spec)


def compare(baseline: Side, candidate: Side, level: float, mixed_budgets: bool = False) -> pd.DataFrame:
    """One row per (model, backend, score) both sides hold: candidate minus baseline, Welch's p and the verdict.
    Two MLflow runs of different models are compared with each other. Models that ran at different budgets
    (``datasets.<name>.budget``) are refused unless ``mixed_budgets``; then each row names both budgets."""
    pairs = [(k, k) for k in baseline.scores if k in candidate.scores]
    if not pairs and len(baseline.scores) and all(label.startswith("mlflow:") for label in (baseline.label, candidate.label)):
        pairs = [(a, b) for a in baseline.scores for b in candidate.scores if a[1] == b[1]]
    if not pairs:
        raise StageInputError(f"{baseline.label} and {candidate.label} have no (model, features) in common")

    def budget(side: Side, key: tuple[str, str]) -> str:
        return side.budgets.get(key[0], DEFAULT_BUDGET)

    mixed = [(a, b) for a, b in pairs if budget(baseline, a) != budget(candidate, b)]
    if mixed and not mixed_budgets:
        a, b = mixed[0]
        raise StageInputError(f"{a[0]} ran at budget '{budget(baseline, a)}' in {baseline.label} but {b[0]} at "
                              f"budget '{budget(candidate, b)}' in {candidate.label}: their scores differ by the "
                              "models' size and training as well as by the change; compare runs of one budget "
                              "(datasets.<name>.budget), or pass --mixed-budgets to see them side by side anyway")
    rows = []
    for a_key, b_key in pairs:
        a, b = baseline.scores[a_key], candidate.scores[b_key]
        ba, bb = budget(baseline, a_key), budget(candidate, b_key)
        for score in (s for s in COMPARED if s in a and s in b):
            d = welch(b[score], a[score], level)
            better = d.change < 0 if LOWER_IS_BETTER[score] else d.change > 0
            verdict = ("better" if better else "worse") + ", beyond noise" if d.beyond_noise else "within noise"
            model = a_key[0] if a_key[0] == b_key[0] else f"{a_key[0]} vs {b_key[0]}"
            rows.append({"model": model, **({"budget": f"{ba} vs {bb}"} if mixed else {}),
                         "features": a_key[1], "score": score,
                         "baseline": f"{a[score].mean:.4g} ± {a[score].std:.2g}",
                         "candidate": f"{b[score].mean:.4g} ± {b[score].std:.2g}",
                         "change": d.change, "p": d.p, "verdict": verdict})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", help="workspace, a DVC experiment or Git revision, or mlflow:<run id>")
    parser.add_argument("candidate", help="the same kinds as baseline")
    parser.add_argument("--level", type=float, default=None,
                        help="significance level of the test (default: evaluate.significance in params.yaml)")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of a Markdown table")
    parser.add_argument("--mixed-budgets", action="store_true",
                        help="compare models that ran at different budgets (datasets.<name>.budget) anyway")
    args = parser.parse_args(argv)
    try:
        level = args.level if args.level is not None else load_params().evaluate.significance
        table = compare(load_side(args.baseline), load_side(args.candidate), level, args.mixed_budgets)
    except EXPECTED_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.csv:
        print(table.to_csv(index=False), end="")
    else:
        print(f"{args.candidate} against {args.baseline}: mean ± standard deviation over the draws; "
              f"Welch's t-test at level {level:g}")
        print(table.to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
