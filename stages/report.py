"""DVC stage report: every (dataset, model, sampler) result in one Markdown table and one HTML page."""

from _environment import finish, project_environment

with project_environment():
    from diffusionlab.pipeline.cli import run_stage
    from diffusionlab.pipeline.report import report_stage

if __name__ == "__main__":
    run_stage(report_stage, with_model=False, with_dataset=False)
    finish()
