"""Stage report."""

from __future__ import annotations

import logging

import pandas as pd

from .. import paths
from ..config.sampling import RestoreConfig
from ..config.sections import EvaluateConfig, PipelineConfig
from ..evaluation.report import (
    MONITOR_FILE,
    ModelResult,
    Results,
    main_rows,
    render_html,
    render_markdown,
    results_table,
    verdicts,
)
from ..io import atomic_path, read_json
from ..validation import View

log = logging.getLogger(__name__)


class ReportParams(View):
    """What the report reads of params.yaml: the datasets and models the pipeline runs, the restorations it ran, and
    the test's level."""

    pipeline: PipelineConfig = PipelineConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    restore: RestoreConfig = RestoreConfig()


def collect(params: ReportParams) -> Results:
    """The results of every (dataset, model) that ``pipeline`` lists, read from the stages' outputs (and the
    monitor's curve beside the train stage's, where ``python -m diffusionlab.monitor`` wrote one)."""
    results = Results(significance=params.evaluate.significance)
    for dataset in params.pipeline.datasets:
        results.floors[dataset] = read_json(paths.reference(dataset) / "floor.json")
        for model in params.pipeline.models:
            evaluated, monitor = paths.evaluate(dataset, model), paths.train(dataset, model) / MONITOR_FILE
            metrics = read_json(evaluated / "metrics.json")
            if "autoencoder" in metrics:
                results.autoencoders[(dataset, model)] = metrics["autoencoder"]
            attributes = paths.attribute_samples(dataset, model) / "grid.png"
            tasks = params.restore.tasks if model in params.restore.models else ()
            restored = {task: paths.restore(dataset, model, task) for task in tasks}
            results.models.append(ModelResult(
                dataset=dataset, model=model, family=metrics["family"], metrics=metrics,
                sweep=pd.read_csv(evaluated / "sweep.csv"),
                loss=pd.read_csv(paths.train(dataset, model) / "loss.csv"),
                grid_png=paths.sample(dataset, model) / "grid.png",
                guidance=pd.read_csv(evaluated / "guidance.csv"),
                ema=pd.read_csv(evaluated / "ema.csv"),
                monitor=pd.read_csv(monitor) if monitor.is_file() else None,
                restoration=pd.concat([pd.read_csv(p / "summary.csv") for p in restored.values()], ignore_index=True)
                if restored else None,
                restoration_prior=read_json(next(iter(restored.values())) / "metrics.json")["prior"] if restored else "",
                restoration_figures={task: p / "figure.png" for task, p in restored.items()},
                attributes_png=attributes if attributes.is_file() else None,
            ))
    return results


def report_stage(params: ReportParams) -> None:
    """Write the comparison report: report.md, report.html (self-contained) and results.csv."""
    results = collect(params)
    out = paths.report()
    with atomic_path(out / "results.csv") as tmp:
        pd.concat([verdicts(main_rows(results), results.significance).assign(table="main"),
                   results_table(results).assign(table="steps")]).to_csv(tmp, index=False)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_markdown(results, out))
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(render_html(results))
    log.info("report of %d models on %s: %s", len(results.models), ", ".join(results.floors), out / "report.html")
