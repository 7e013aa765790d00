"""The comparison report renders with one model and with several, as Markdown and self-contained HTML."""

import base64
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from diffusionlab.evaluation.report import (
    FLOOR_MODEL,
    ModelResult,
    Results,
    main_rows,
    main_table,
    plain_summary,
    render_html,
    render_markdown,
    results_table,
    summary_lines,
    summary_table,
    verdicts,
)


def floor(fid, spread="draws"):
    scores = {"fid": fid, "fid_std": 0.05, "isc": 9.5, "isc_std": 0.1, "kid": 0.001, "kid_std": 0.0005,
              "precision": 0.9, "precision_std": 0.01, "recall": 0.9, "recall_std": 0.01, "draws": 3,
              "spread": spread}
    if spread == "bootstrap":
        scores.update(draws=1, resamples=20)
    return {"num_held_out": 40, "num_reference": 200, "classifier": scores}


def summary(fid, std=0.2):
    return {"fid": fid, "fid_std": std, "isc": 8.0, "isc_std": 0.1, "kid": 0.01, "kid_std": 0.002,
            "precision": 0.7, "precision_std": 0.02, "recall": 0.6, "recall_std": 0.02, "draws": 3}


def model_result(tmp_path, dataset, model, fid, colour, std=0.2, conditional=False):
    grid = tmp_path / f"{dataset}-{model}.png"
    Image.new("RGB", (10, 10), colour).save(grid)
    sweep = pd.DataFrame([{"steps": n, "backend": "classifier", **summary(fid * 50 / n, std)} for n in (10, 25, 50)])
    loss = pd.DataFrame({"step": [50, 100, 150], "loss": [1.0, 0.5, 0.3]})
    metrics = {"family": model, "sampler": "ddim", "steps": 50, "bpd": 2.5, "draws": 3, "num_generated": 40,
               "task": "conditional, w=1" if conditional else "unconditional", "classifier": summary(fid, std)}
    guidance = pd.DataFrame()
    if conditional:
        metrics.update(guidance=1.0, class_accuracy=0.9, class_accuracy_std=0.01,
                       unconditional={"classifier": summary(3 * fid, std)})
        guidance = pd.DataFrame([{"guidance": w, "backend": "classifier", "class_accuracy": a,
                                  "class_accuracy_std": 0.01, **summary(f, std)}
                                 for w, a, f in ((0.0, 0.1, 3 * fid), (1.0, 0.9, fid), (3.0, 0.99, 2 * fid))])
    return ModelResult(dataset, model, model, metrics, sweep, loss, grid, guidance)


@pytest.fixture
def several(tmp_path):
    results = Results(floors={"digits": floor(0.5), "mnist": floor(0.7, "bootstrap")})
    for i, model in enumerate(("ddpm", "vlb", "vdm")):
        results.models.append(model_result(tmp_path, "digits", model, 10.0 + i, (50 * i, 0, 0)))
    results.models.append(model_result(tmp_path, "mnist", "ddpm", 20.0, (0, 0, 200)))
    return results


def test_the_table_has_a_row_per_model_sampler_steps_and_backend_and_the_floor(several):
    table = results_table(several)
    assert len(table) == 2 + 4 * 3  # two floor rows, four models at three step counts
    floor_rows = table[table.model == FLOOR_MODEL]
    assert list(floor_rows.dataset) == ["digits", "mnist"] and list(floor_rows.fid) == [0.5, 0.7]
    vlb = table[(table.model == "vlb") & (table.steps == 10)].iloc[0]
    assert vlb.fid == pytest.approx(55.0) and vlb.fid_std == 0.2 and vlb.bpd == 2.5 and vlb.backend == "classifier"
    main = main_table(several)
    assert len(main) == 2 + 4 and set(main.steps.dropna()) == {50}
    assert list(main.model) == [FLOOR_MODEL, "ddpm", "vlb", "vdm", FLOOR_MODEL, "ddpm"]
    assert main.FID.iloc[1] == "10 ± 0.2" and main["draws × images"].iloc[1] == "3 × 40"
    assert main["draws × images"].iloc[4] == "1 × 40 (20 bootstrap resamples)"


def test_each_model_is_tested_against_the_best_of_its_task_and_the_floor(tmp_path):
    results = Results(floors={"digits": floor(0.5)})
    results.models += [model_result(tmp_path, "digits", "a", 10.0, "red"),
                       model_result(tmp_path, "digits", "b", 10.1, "red"),  # within the noise of a
                       model_result(tmp_path, "digits", "c", 14.0, "red")]  # beyond it
    table = verdicts(main_rows(results), 0.05).set_index("model")
    assert bool(table.loc["a", "best"]) and pd.isna(table.loc["a", "fid_vs_best"])
    assert table.loc["b", "fid_vs_best"] == pytest.approx(0.1) and table.loc["b", "fid_vs_best_p"] > 0.05
    assert table.loc["c", "fid_vs_best"] == pytest.approx(4.0) and table.loc["c", "fid_vs_best_p"] < 0.001
    assert all(table.loc[m, "fid_vs_floor_p"] < 0.001 for m in "abc")
    shown = main_table(results).set_index("model")
    assert shown.loc["a", "FID vs best"] == "best"
    assert shown.loc["b", "FID vs best"].startswith("+0.1, within noise (p=")
    assert shown.loc["c", "FID vs best"].startswith("+4, beyond noise (p=")
    assert "Welch's t-test over the draws" in render_markdown(results, tmp_path)


def test_a_conditional_model_shows_both_tasks_and_competes_within_each(tmp_path):
    results = Results(floors={"digits": floor(0.5)})
    results.models += [model_result(tmp_path, "digits", "cond", 5.0, "red", conditional=True),
                       model_result(tmp_path, "digits", "uncond", 12.0, "red")]
    table = main_table(results).set_index(["model", "task"])
    assert set(table.index) == {(FLOOR_MODEL, ""), ("cond", "conditional, w=1"), ("cond", "unconditional (w=0)"),
                                ("uncond", "unconditional")}
    assert table.loc[("cond", "conditional, w=1"), "FID vs best"] == "best"
    assert table.loc[("uncond", "unconditional"), "FID vs best"] == "best"  # 12 against the w=0 branch's 15
    assert table.loc[("cond", "unconditional (w=0)"), "FID"] == "15 ± 0.2"
    assert table.loc[("cond", "conditional, w=1"), "class accuracy"] == "0.9 ± 0.01"
    assert len(embedded_images(render_html(results))) == 2 + 1 + 2  # loss, FID-steps, guidance; two grids


def embedded_images(page):
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_html_is_self_contained_with_figures_and_sample_grids_embedded(several, tmp_path):
    page = render_html(several)
    pngs = embedded_images(page)
    assert len(pngs) == 2 * 2 + 4  # per dataset: loss and FID-steps figures (no conditional model); one grid each
    assert all(p.startswith(b"\x89PNG") for p in pngs)
    assert (tmp_path / "digits-vlb.png").read_bytes() in pngs
    assert not re.search(r'(src|href)="(?!data:)', page), "the page must not load anything from outside"
    for text in ("real held-out data", "ddpm", "vlb", "vdm", "mnist", "bits/dim", "55"):
        assert text in page


def test_report_renders_with_a_single_model(tmp_path):
    results = Results(floors={"digits": floor(0.5)}, models=[model_result(tmp_path, "digits", "ddpm", 10.0, "red")])
    page = render_html(results)
    assert len(embedded_images(page)) == 3 and "ddpm" in page
    md = render_markdown(results, Path("outputs/report"))
    rows = [line for line in md.splitlines() if line.startswith("| digits")]
    assert len(rows) == 1 + 2 + 4  # summary: the model; main table: floor and model; full: floor, model at 3 steps
    assert "real held-out data" in md


def test_markdown_links_each_grid_relative_to_the_report(several):
    several.models[0].grid_png = Path("outputs/sample/digits-ddpm/grid.png")
    md = render_markdown(several, Path("outputs/report"))
    assert "](../../outputs/sample/digits-ddpm/grid.png)" in md


def test_a_missing_value_is_an_empty_cell_in_both_formats(several, tmp_path):
    """The floor has no sampling steps: its cell is empty, not pandas' <NA>."""
    page, md = render_html(several), render_markdown(several, tmp_path)
    assert "&lt;NA&gt;" not in page and "<NA>" not in md
    header, _, *rows = [[cell.strip() for cell in line.strip("|").split("|")]
                        for line in md.split("## Results at each model's sampling steps")[1].strip().splitlines()
                        if line.startswith("|")]
    floor = next(row for row in rows if FLOOR_MODEL in row)
    assert floor[header.index("steps")] == ""
    main = page.split("<h2>Results at each model's sampling steps</h2>")[1]
    html_floor = next(row for row in main.split("<tr>") if FLOOR_MODEL in row)
    cells = re.findall(r"<td>(.*?)</td>", html_floor, re.S)
    header_html = re.findall(r"<th>(.*?)</th>", main.split("<tbody>")[0])
    assert cells[header_html.index("steps")] == ""


def test_the_report_leads_with_a_summary_of_one_row_per_model_and_task_with_the_full_tables_verdicts(tmp_path):
    results = Results(floors={"digits": floor(0.5)})
    results.models += [model_result(tmp_path, "digits", "a", 10.0, "red", conditional=True),
                       model_result(tmp_path, "digits", "b", 10.1, "red", conditional=True),  # within a's noise
                       model_result(tmp_path, "digits", "c", 14.0, "red")]  # unconditional, beyond the noise
    for r in results.models:  # a second backend on which c is the best unconditional model
        r.metrics["resnet"] = summary(r.metrics["classifier"]["fid"] / 10)
        if "unconditional" in r.metrics:
            r.metrics["unconditional"]["resnet"] = summary(5.0)
    results.floors["digits"]["resnet"] = results.floors["digits"]["classifier"]
    judged = verdicts(main_rows(results), 0.05)
    table = summary_table(judged, 0.05)
    assert list(zip(table.model, table.task)) == [
        ("a", "conditional, w=1"), ("b", "conditional, w=1"),  # grouped by the task the rows compete in
        ("a", "unconditional (w=0)"), ("b", "unconditional (w=0)"), ("c", "unconditional")]
    assert list(table.columns[4:]) == [f"{what} {b}" if what == "FID" else f"{what} ({b})"
                                       for b in ("classifier", "resnet") for what in ("FID", "vs best", "vs floor")]
    rows = table.set_index(["model", "task"])
    full = main_table(results).set_index(["model", "task", "features"])
    for (model, task), row in rows.iterrows():
        for backend in ("classifier", "resnet"):
            line = full.loc[(model, task, backend)]
            assert row[f"FID {backend}"] == line.FID
            said, long = row[f"vs best ({backend})"], line["FID vs best"]
            assert said == long == "best" or (said.startswith("≈") == ("within noise" in long))
            assert row[f"vs floor ({backend})"].startswith("≈") == ("within noise" in line["FID vs floor"])
    assert rows.loc[("a", "conditional, w=1"), "vs best (classifier)"] == "best"
    assert rows.loc[("b", "conditional, w=1"), "vs best (classifier)"].startswith("≈ best (p=")
    assert rows.loc[("c", "unconditional"), "vs best (classifier)"] == "best"  # 14 against the w=0 branches' 30
    assert rows.loc[("a", "unconditional (w=0)"), "vs best (classifier)"].startswith("+16 (p=")
    assert rows.loc[("c", "unconditional"), "vs best (resnet)"] == "best"  # 1.4 against the w=0 branches' 5
    assert rows.loc[("a", "unconditional (w=0)"), "vs best (resnet)"].startswith("+3.6 (p=")
    lines = summary_lines(judged, 0.05)
    assert lines[0].startswith("- **digits, conditional, w=1** (2 models): classifier: best a; within its noise: b")
    md, page = render_markdown(results, tmp_path), render_html(results)
    assert md.index("## Summary") < md.index("## digits (budget default): samples") < md.index("## Results at each model")
    assert page.index("<h2>Summary</h2>") < page.index("<h2>digits (budget default): samples</h2>") < page.index(
        "<h2>Results at each model")
    assert lines[1].startswith("- **digits, unconditional** (3 models): classifier: best c; at the floor: none")
    assert lines[0].split("** ")[1] in md and "<b>digits, conditional, w=1</b>" in page


def plain(results):
    return plain_summary(verdicts(main_rows(results), 0.05), 0.05, results_table(results))


def test_the_plain_summary_says_tied_at_the_floor_times_the_floor_and_what_fewer_steps_cost(tmp_path):
    results = Results(floors={"digits": floor(0.5)})
    # within each other's noise and the floor's at w = 1; 10x the floor at w = 0 (its branch: 3 x); FID 50 / n x
    results.models += [model_result(tmp_path, "digits", m, fid, "red", std=0.3, conditional=True)
                       for m, fid in (("a", 0.5), ("b", 0.6), ("c", 0.55))]
    first, second, steps = plain(results)
    assert first.startswith("Asked for a class at guidance w = 1, a, b and c are tied: no difference between them "
                            "exceeds the noise of 3 draws of 40 images under the feature network.")
    assert first.endswith("All are as close to the training images as real held-out images are (within the noise of "
                          "the real-data floor).")
    assert second.startswith("Without a class (w = 0, each model's unconditional branch), a, b and c are tied")
    assert second.endswith("Their FID is 3.0–3.6 times that of real held-out images (the floor) under classifier, "
                           "beyond the noise.")  # 1.5, 1.8, 1.65 against 0.5
    assert steps == ("Fewer sampling steps cost quality: at 10 steps instead of 50, every model's FID is higher beyond "
                     "the noise under the feature network (5.0 times as high).")


def test_the_plain_summary_names_a_best_model_beyond_the_noise_and_steps_that_change_nothing(tmp_path):
    results = Results(floors={"digits": floor(0.5)})
    results.models += [model_result(tmp_path, "digits", "a", 10.0, "red"),
                       model_result(tmp_path, "digits", "b", 14.0, "red")]
    for r in results.models:  # every step count within the noise of the model's own
        r.sweep["fid"], r.sweep["fid_std"] = r.metrics["classifier"]["fid"], 5.0
    task, steps = plain(results)
    assert task == ("Unconditional, a is best under the feature network; b is worse beyond the noise of 3 draws of 40 "
                    "images under the feature network. Their FID is 20–28 times that of real held-out images (the "
                    "floor) under classifier, beyond the noise.")
    assert steps == "Sampling at 10 steps instead of 50 changes no FID beyond the noise."
    assert task in render_markdown(results, tmp_path) and task.split(";")[0] in render_html(results)


def test_the_plain_summary_says_when_the_feature_networks_disagree_on_what_fewer_steps_cost(tmp_path):
    results = Results(floors={"digits": floor(0.5)})
    results.floors["digits"]["resnet"] = results.floors["digits"]["classifier"]
    results.models += [model_result(tmp_path, "digits", m, 10.0, "red") for m in ("a", "b")]
    for r in results.models:  # the classifier's FID is 50 / n times as high at n steps; the resnet's does not move
        r.metrics["resnet"] = summary(1.0)
        r.sweep = pd.concat([r.sweep, r.sweep.assign(backend="resnet", fid=1.0, fid_std=0.2)], ignore_index=True)
    assert plain(results)[-1] == ("At 10 steps instead of 50, FID is higher for a and b under classifier, beyond the "
                                  "noise, and within it otherwise: the feature networks do not agree that fewer "
                                  "steps cost quality.")


def test_the_ema_widths_table_marks_the_best_width_and_judges_each_against_the_default_ema(tmp_path):
    from diffusionlab.evaluation.report import ema_table

    result = model_result(tmp_path, "digits", "edm", 10.0, "red")
    result.ema = pd.DataFrame([
        {"ema_width": None, "backend": "classifier", "fid": 10.0, "fid_std": 0.2, "draws": 3},
        {"ema_width": 0.05, "backend": "classifier", "fid": 9.0, "fid_std": 0.2, "draws": 3, "fid_vs_default": -1.0,
         "fid_vs_default_p": 0.004},
        {"ema_width": 0.15, "backend": "classifier", "fid": 10.1, "fid_std": 0.3, "draws": 3, "fid_vs_default": 0.1,
         "fid_vs_default_p": 0.65}])
    result.metrics["ema"] = {"classifier": {"best_width": 0.05}}
    results = Results(floors={"digits": floor(0.5)}, models=[result])
    table = ema_table(results, 0.05)
    assert list(table.EMA) == ["default (train.ema_decay)", "sigma_rel 0.05", "sigma_rel 0.15"]
    assert list(table["best width"]) == ["", "best", ""]
    assert table["vs default EMA"].tolist() == ["", "-1, beyond noise (p=0.004)", "+0.1, within noise (p=0.65)"]
    assert "Post-hoc EMA widths" in render_markdown(results, Path("outputs/report")) and "sigma_rel 0.15" in \
        render_html(results)
    assert "Post-hoc EMA widths" not in render_markdown(Results(floors={"digits": floor(0.5)}, models=[
        model_result(tmp_path, "digits", "ddpm", 10.0, "red")]), Path("outputs/report"))


def test_every_step_count_shows_its_network_evaluations_per_image(tmp_path):
    from diffusionlab.evaluation.report import steps_table

    heun = model_result(tmp_path, "digits", "edm", 10.0, "red")
    heun.metrics["sampler"] = "heun"
    guided = model_result(tmp_path, "digits", "ddpm", 10.0, "blue", conditional=True)
    guided.metrics["guidance"] = 3.0
    table = steps_table(Results(floors={"digits": floor(0.5)}, models=[heun, guided]))
    shown = {(m, n): e for m, n, e in zip(table.model, table.steps, table["network evaluations"]) if m != FLOOR_MODEL}
    assert shown == {("edm", 10): 19, ("edm", 25): 49, ("edm", 50): 99, ("ddpm", 10): 20, ("ddpm", 25): 50,
                     ("ddpm", 50): 100}
    assert table[table.model == FLOOR_MODEL]["network evaluations"].isna().all()


def test_a_text_model_gets_a_prompt_adherence_table_and_its_attribute_grid(tmp_path):
    text = model_result(tmp_path, "digits", "flow_text", 10.0, "green", conditional=True)
    text.metrics.update(clip_score=70.6, clip_score_std=0.3, attributes={
        "images_per_draw": 300, "prompts": 60, "held_out": ["thick 7"], "thickness_r": 0.81, "thickness_r_std": 0.04,
        "thickness_gain": 0.9, "thickness_gain_std": 0.1, "thickness_gain_held_out": 0.5,
        "thickness_gain_held_out_std": 0.2, "real": {"thickness_r": 0.89, "thickness_r_std": 0.01}})
    text.attributes_png = tmp_path / "attributes.png"
    Image.new("RGB", (10, 6), "blue").save(text.attributes_png)
    results = Results(floors={"digits": floor(0.5)},
                      models=[model_result(tmp_path, "digits", "flow", 10.0, "red", conditional=True), text])
    page, md = render_html(results), render_markdown(results, Path("outputs/report"))
    assert text.attributes_png.read_bytes() in embedded_images(page)
    for shown_in in (page, md):
        assert "Prompt adherence" in shown_in and "70.6 ± 0.3" in shown_in and "0.81 ± 0.04" in shown_in
        assert "thickness gain held out" in shown_in and "thick 7" in shown_in
    section = md.split("## Prompt adherence")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| digits")]
    assert len(rows) == 2 and "flow_text" in rows[0]  # the class-conditional flow has no adherence row
    assert "real data" in rows[1] and "0.89 ± 0.01" in rows[1]
