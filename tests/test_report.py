"""The comparison report renders with one model and with several, as Markdown and self-contained HTML."""

import base64
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from diffusionlab.report import FLOOR_MODEL, ModelResult, Results, main_table, render_html, render_markdown, results_table


def floor(fid):
    scores = {"fid": fid, "isc_mean": 9.5, "kid_mean": 0.001, "precision": 0.9, "recall": 0.9,
              "num_generated": 40, "num_reference": 200}
    return {"num_held_out": 40, "num_reference": 200, "classifier": scores}


def model_result(tmp_path, dataset, model, fid, colour):
    grid = tmp_path / f"{dataset}-{model}.png"
    Image.new("RGB", (10, 10), colour).save(grid)
    sweep = pd.DataFrame([{"steps": n, "backend": "classifier", "fid": fid * 50 / n, "isc_mean": 8.0,
                           "kid_mean": 0.01, "precision": 0.7, "recall": 0.6, "num_generated": 40,
                           "num_reference": 200} for n in (10, 25, 50)])
    loss = pd.DataFrame({"step": [50, 100, 150], "loss": [1.0, 0.5, 0.3]})
    metrics = {"family": model, "sampler": "ddim", "steps": 50, "bpd": 2.5}
    return ModelResult(dataset, model, model, metrics, sweep, loss, grid)


@pytest.fixture
def several(tmp_path):
    results = Results(floors={"digits": floor(0.5), "mnist": floor(0.7)})
    for i, model in enumerate(("ddpm", "vlb", "vdm")):
        results.models.append(model_result(tmp_path, "digits", model, 10.0 + i, (50 * i, 0, 0)))
    results.models.append(model_result(tmp_path, "mnist", "ddpm", 20.0, (0, 0, 200)))
    return results


def test_the_table_has_a_row_per_model_sampler_steps_and_backend_and_the_floor(several):
    table = results_table(several)
    assert len(table) == 2 + 4 * 3  # two floor rows, four models at three step counts
    floor_rows = table[table.model == FLOOR_MODEL]
    assert list(floor_rows.dataset) == ["digits", "mnist"] and list(floor_rows.FID) == [0.5, 0.7]
    vlb = table[(table.model == "vlb") & (table.steps == 10)].iloc[0]
    assert vlb.FID == pytest.approx(55.0) and vlb["bits/dim"] == 2.5 and vlb.features == "classifier"
    main = main_table(several)
    assert len(main) == 2 + 4 and set(main.steps.dropna()) == {50}


def embedded_images(page):
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_html_is_self_contained_with_figures_and_sample_grids_embedded(several, tmp_path):
    page = render_html(several)
    pngs = embedded_images(page)
    assert len(pngs) == 2 * 2 + 4  # per dataset: loss and FID-steps figures; one grid per model
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
    assert len(rows) == 2 + 4  # main table: floor and model; full table: floor and model at 3 step counts
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
    html_floor = next(row for row in page.split("<tr>") if FLOOR_MODEL in row)
    cells = re.findall(r"<td>(.*?)</td>", html_floor, re.S)
    header_html = re.findall(r"<th>(.*?)</th>", page.split("<tbody>")[0])
    assert cells[header_html.index("steps")] == ""
