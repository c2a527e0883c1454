"""The streamlit app, driven headless with streamlit.testing.v1.AppTest on the toy experiment."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("streamlit")
from streamlit.elements.widgets.button import ButtonMixin  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from explorer import app_state  # noqa: E402
from tests.app_tables import chosen_table  # noqa: E402

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 120


@pytest.fixture(scope="module")
def toy_spec(tmp_path_factory) -> Path:
    from explorer.experiment.experiment import Experiment
    from tests.toy_zoo import build

    spec = build(tmp_path_factory.mktemp("toy"))
    Experiment.from_file(spec).run(progress=False)
    return spec


@pytest.fixture
def app(toy_spec, monkeypatch):
    monkeypatch.setenv(app_state.SPEC_ENV, str(toy_spec))
    monkeypatch.delenv(app_state.STORE_ENV, raising=False)
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def chosen(at) -> np.ndarray:
    return chosen_table(at)["coefficient"].to_numpy(dtype=float)


def predicted(at) -> np.ndarray:
    return chosen_table(at)["predicted"].to_numpy(dtype=float)


def slider(at, prefix: str, task: str):
    keys = [s.key for s in at.slider if s.key.startswith(prefix + ":") and s.key.endswith(":" + task)]
    assert keys, f"no {prefix} slider for {task}"
    return at.slider(key=keys[0])


def header_metadata(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})


def front_specs(at) -> list[dict]:
    """The Vega-Lite specs of the page's 2-D fronts (explorer/front_vega.py)."""
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def no_errors(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_loads_without_exceptions(app):
    at = app.run()
    no_errors(at)
    assert len(at.slider) == 6  # one importance and one minimum slider per task
    assert chosen_table(at)["task"].tolist() == ["low (accuracy)", "mid (accuracy)", "high (accuracy)"]
    assert at.query_params.get("w")  # the choice is in the URL
    labels = {b.label for b in at.get("download_button")}
    assert labels == {"coefficients.json", "mergekit.yaml", "merged.safetensors", "report.html", "explorer.html"}


def test_importance_slider_changes_choice(app):
    at = app.run()
    before = chosen(at)
    slider(at, "w", "high").set_value(10.0).run()
    no_errors(at)
    after = chosen(at)
    assert not np.allclose(before, after)
    assert "high:10" in at.query_params["w"]


def test_minimum_slider_moves_choice_to_feasible_point(app):
    at = app.run()
    task, i = "high", 2
    current = predicted(at)[i]
    s = slider(at, "min", task)
    target = min(s.max, current * 100 + 0.5 * (s.max - current * 100))  # above the current point, in percent
    target = round(target, 1)
    s.set_value(target).run()
    no_errors(at)
    assert not [w for w in at.warning if "No front point meets" in w.value]
    assert predicted(at)[i] >= target / 100 - 1e-9
    assert "min" in at.query_params and task in at.query_params["min"]


def test_link_reopens_choice(app):
    app.query_params.update({"w": "low:1,mid:1,high:7.5", "min": "mid:0.9"})
    at = app.run()
    no_errors(at)
    assert slider(at, "w", "high").value == pytest.approx(7.5)
    assert slider(at, "min", "mid").value == pytest.approx(90.0)
    assert predicted(at)[1] >= 0.9 - 1e-9


def test_exports_match_cli(app, toy_spec, tmp_path, monkeypatch):
    captured = {}
    original = ButtonMixin.download_button

    def spy(self, label, data, *args, **kwargs):
        captured[label] = data
        return original(self, label, data, *args, **kwargs)

    monkeypatch.setattr(ButtonMixin, "download_button", spy)
    from explorer import cli

    out = tmp_path / "cli"  # the CLI measures the exported point (validation and test split) and stores it ...
    assert cli.main(["export", str(toy_spec), "--weights", "low=1.0,mid=3.0,high=1.0", "--out", str(out)]) == 0
    at = app.run()
    slider(at, "w", "mid").set_value(3.0).run()
    no_errors(at)
    files = {k: (v() if callable(v) else v) for k, v in captured.items()}
    doc = json.loads(files["coefficients.json"])  # ... so the app's export, which measures nothing, carries the same
    assert doc["measured"] and all(np.isfinite(v) for v in doc["test_split"]["metrics"].values())
    assert doc == json.loads((out / "coefficients.json").read_text())
    assert files["coefficients.json"] == (out / "coefficients.json").read_bytes()
    assert yaml.safe_load(files["mergekit.yaml"]) == yaml.safe_load((out / "mergekit.yaml").read_text())
    from safetensors.numpy import load

    ours, theirs = load(files["merged.safetensors"]), load((out / "merged.safetensors").read_bytes())
    assert set(ours) == set(theirs) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for k in ours:  # same tensors (the header's metadata order may differ between writes)
        assert np.array_equal(ours[k], theirs[k])
    assert header_metadata(files["merged.safetensors"]) == header_metadata((out / "merged.safetensors").read_bytes())
    html = files["report.html"].decode()
    assert html.startswith("<!DOCTYPE html>") and "fig-front_2d" in html and "fig-quality" in html
    assert '<script src="http' not in html and len(html) > 1_000_000  # plotly.js inline: opens offline


def test_verify_stores_measured_result(app, toy_spec):
    from explorer.experiment.experiment import Experiment

    at = app.run()
    slider(at, "w", "low").set_value(4.2).run()
    c = chosen(at)
    at.button(key="verify").click().run()
    no_errors(at)
    exp = Experiment.from_file(toy_spec)
    C, M, kinds = exp.measured(["verify"])
    assert any(np.allclose(row, c, atol=1e-4) for row in C)
    table = chosen_table(at)
    assert "measured" in table.columns and np.isfinite(table["measured"].to_numpy(dtype=float)).all()
    assert any("Verified" in s.value for s in at.success)


def test_polish_stores_results_and_chooses_the_best_measured_merge(app, toy_spec):
    from explorer.experiment.experiment import Experiment

    at = app.run()
    slider(at, "w", "high").set_value(6.5).run()
    pick = chosen(at)
    at.number_input(key="polish_budget").set_value(4).run()
    button = at.button(key="polish")
    assert button.label == "Polish (4 evaluations)"
    button.click().run()
    no_errors(at)
    C, M, _ = Experiment.from_file(toy_spec).measured(["polish"])
    assert 1 <= len(C) <= 4 and any(np.allclose(c, pick, atol=1e-4) for c in C)  # starts at the pick, all stored
    now = chosen(at)
    k = int(np.argmin(np.abs(C - now).max(axis=1)))
    assert np.allclose(C[k], now, atol=1e-4)  # the chosen merge is the best measured point
    table = chosen_table(at)
    assert np.allclose(table["measured"].to_numpy(dtype=float), M[k], atol=1e-4)  # measured vs predicted
    polish = next(d.value for d in at.dataframe if "measured (polished)" in d.value.columns)
    assert np.allclose(polish["measured (polished)"].to_numpy(dtype=float), M[k], atol=1e-4)
    assert {"predicted (pick)", "measured (pick)", "predicted (polished)"} <= set(polish.columns)
    assert any("real evaluations" in c.value for c in at.caption)


def test_no_evaluations_yet_shows_message(toy_spec, tmp_path, monkeypatch):
    monkeypatch.setenv(app_state.SPEC_ENV, str(toy_spec))
    monkeypatch.setenv(app_state.STORE_ENV, str(tmp_path / "empty.sqlite"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    no_errors(at)
    assert any("No front yet" in i.value for i in at.info)
    assert any(b.label == "Start evaluation" for b in at.button)


def test_invalid_spec_shows_message(toy_spec, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    shutil.copytree(toy_spec.parent, bad, ignore=shutil.ignore_patterns("store.sqlite*"))
    data = yaml.safe_load((bad / "spec.yaml").read_text())
    data["taks"] = data.pop("tasks")
    (bad / "spec.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv(app_state.SPEC_ENV, str(bad / "spec.yaml"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("spec.yaml" in e.value and "tasks" in e.value for e in at.error)


def test_missing_demo_shows_build_command(tmp_path, monkeypatch):
    monkeypatch.delenv(app_state.SPEC_ENV, raising=False)
    missing = tmp_path / "examples" / "demo.yaml"
    monkeypatch.setattr(app_state.arguments, "DEFAULT_SPEC", missing)  # what app_args falls back to
    monkeypatch.setattr(app_state, "DEFAULT_SPEC", missing)  # what app.py compares the spec with (S.DEFAULT_SPEC)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error
    assert any(app_state.DEMO_COMMAND in i.value for i in at.info)
    assert any(b.label == "Build the demo now" for b in at.button)


# --- what the server allows: workspace, trust_pickle, present mode --------------------------------
def copy_spec(toy_spec: Path, where: Path, **model_updates) -> Path:
    """A copy of the toy experiment (checkpoints and store) at `where`, its spec's model updated."""
    shutil.copytree(toy_spec.parent, where)
    data = yaml.safe_load((where / "spec.yaml").read_text())
    data["model"].update(model_updates)
    (where / "spec.yaml").write_text(yaml.safe_dump(data, sort_keys=False))  # task order is part of the key
    return where / "spec.yaml"


def load_spec_in_sidebar(at, path: Path):
    at.text_input(key="spec_input").input(str(path))
    next(b for b in at.button if b.label == "Load spec").click()
    return at.run()


def test_spec_outside_the_workspace_is_refused(app, toy_spec, tmp_path, monkeypatch):
    other = copy_spec(toy_spec, tmp_path / "elsewhere")
    monkeypatch.setenv(app_state.WORKSPACE_ENV, str(tmp_path / "workspace"))
    at = load_spec_in_sidebar(app.run(), other)
    assert not at.exception
    refusals = [e.value for e in at.error]
    assert len(refusals) == 1 and "outside the workspace" in refusals[0] and str(other) in refusals[0]
    assert "\n" not in refusals[0]
    assert at.session_state["spec_path"] == str(toy_spec)  # still the experiment it was showing
    assert len(at.slider) == 6 and chosen_table(at) is not None  # ... and its views


def test_spec_inside_a_widened_workspace_opens(app, toy_spec, tmp_path, monkeypatch):
    other = copy_spec(toy_spec, tmp_path / "projects" / "other")
    monkeypatch.setenv(app_state.WORKSPACE_ENV, str(tmp_path / "projects"))
    at = load_spec_in_sidebar(app.run(), other)
    no_errors(at)
    assert at.session_state["spec_path"] == str(other)
    assert len(at.slider) == 6, [i.value for i in at.info]


def test_trust_pickle_spec_needs_the_server_flag(toy_spec, tmp_path, monkeypatch):
    spec = copy_spec(toy_spec, tmp_path / "pickled", trust_pickle=True)
    monkeypatch.setenv(app_state.SPEC_ENV, str(spec))
    monkeypatch.delenv(app_state.TRUST_PICKLE_ENV, raising=False)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    refusals = [e.value for e in at.error]
    assert len(refusals) == 1 and "trust_pickle" in refusals[0] and "--trust-pickle" in refusals[0]
    assert not at.slider and not any(m.value.startswith("| task |") for m in at.markdown)  # nothing of the experiment was opened

    monkeypatch.setenv(app_state.TRUST_PICKLE_ENV, "1")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    no_errors(at)
    assert len(at.slider) == 6


@pytest.mark.parametrize("params, message", [
    ({"w": "low:1,mid:1,high:50"}, "importance lies in [0, 10]"),
    ({"w": "low:1e999"}, "not a finite number"),
    ({"min": "mid:7"}, "outside the front's range"),
    ({"min": "mid:nan"}, "not a finite number"),
    ({"pick": "0.5,0.5"}, "2 coefficients for 3 tasks"),
    ({"pick": "0.2,inf,0.3"}, "not a finite number"),
    ({"pick": "0.2,1.7,0.3"}, "outside the explored box"),
    ({"w": "nosuch:2"}, "no such task"),
])
def test_bad_share_link_values_are_ignored_visibly(app, params, message):
    default = chosen(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    app.query_params.update(params)  # a link is read when a visitor's session starts
    at = app.run()
    assert not at.exception and not at.error
    warnings = [w.value for w in at.sidebar.warning]
    assert any(message in w for w in warnings), warnings
    assert np.allclose(chosen(at), default)  # the bad value changed nothing
    assert slider(at, "w", "high").value <= 10.0


def test_good_pick_in_a_link_selects_that_point(app):
    app.query_params.update({"pick": "0.2,0.6,0.3"})
    at = app.run()
    no_errors(at)
    assert not at.sidebar.warning
    assert np.allclose(chosen(at), [0.2, 0.6, 0.3])


def test_present_mode_is_read_only(app, monkeypatch):
    monkeypatch.setenv(app_state.PRESENT_ENV, "1")
    at = app.run()
    no_errors(at)
    assert not at.text_input  # no path to type
    labels = {b.label for b in at.button}
    assert not labels & {"Start evaluation", "Continue evaluation", "Evaluate the real merged model here",
                         "Load spec", "Build the demo now"}
    assert not [label for label in labels if label.startswith("Polish")] and not at.number_input  # polishing measures
    assert {b.label for b in at.get("download_button")} == {"coefficients.json", "mergekit.yaml", "report.html",
                                                            "explorer.html"}
    before = chosen(at)
    slider(at, "w", "high").set_value(10.0).run()  # exploring still works
    no_errors(at)
    assert not np.allclose(before, chosen(at))
    assert "high:10" in at.query_params["w"]


def test_glance_lines_compare_with_the_references(app):
    at = app.run()
    lines = [m.value for m in at.markdown if m.value.startswith("- ")]
    assert len(lines) == 1
    rows = lines[0].splitlines()
    assert [r.split(":")[0] for r in rows] == ["- low", "- mid", "- high"]
    for r in rows:
        assert "over the base" in r or "below the base" in r
        assert "the expert" in r and "of the expert's gain" in r and "task arithmetic" in r


def test_glance_line_numbers():
    refs = app_state.References(base=np.array([0.718, 2.0]), experts=np.array([0.893, 1.0]),
                                task_arithmetic=np.array([0.810, 1.6]))
    lines = app_state.glance_lines(["digits", "loss"], [1.0, -1.0], [True, False], np.array([0.841, 1.5]), refs)
    assert lines[0] == ("digits: 84.1 % (predicted) — +12.3 points over the base, 5.2 below the expert, "
                        "keeps 70 % of the expert's gain; +3.1 over task arithmetic")
    assert lines[1] == ("loss: 1.5 (predicted) — 0.5 better than the base, 0.5 worse than the expert, "
                        "keeps 50 % of the expert's gain; 0.1 better than task arithmetic")
    bare = app_state.glance_lines(["digits"], [1.0], [True], np.array([0.5]), app_state.References(), measured=True)
    assert bare == ["digits: 50.0 % (measured)"]


def test_front_tasks_are_picked_with_pills(app):
    """Two tasks give the 2-D front, three add the 3-D view, anything else asks for two or three."""
    at = app.run()
    pills = at.button_group[0]
    assert pills.label.startswith("Tasks to plot") and pills.value == ["low", "mid"]
    assert [spec["title"]["text"] for spec in front_specs(at)] == ["Front: low vs mid"]
    assert not at.get("plotly_chart")  # the first page needs no Plotly bundle
    at = pills.set_value(["low", "mid", "high"]).run()
    no_errors(at)
    assert len(at.get("plotly_chart")) == 1 and len(front_specs(at)) == 1  # 3-D and 2-D
    at = at.button_group[0].set_value(["high"]).run()
    assert not at.get("plotly_chart") and not front_specs(at) and any("two or three" in i.value for i in at.info)


def test_other_methods_fronts_are_overlaid_with_a_legend(toy_spec, tmp_path, monkeypatch):
    """After `compare` ran TIES beside task arithmetic on the same store, the front view draws TIES's
    front as its own named line, says whose points and chosen merge it shows, and the chosen panel
    names the method."""
    from explorer.experiment.experiment import Experiment

    spec = tmp_path / "toy" / "spec.yaml"
    shutil.copytree(toy_spec.parent, spec.parent)
    Experiment.from_file(spec, method="ties").run(progress=False)  # the same checkpoints, merged by TIES
    monkeypatch.setenv(app_state.SPEC_ENV, str(spec))
    monkeypatch.delenv(app_state.STORE_ENV, raising=False)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    no_errors(at)
    names = next(layer["encoding"]["shape"]["scale"]["domain"] for layer in front_specs(at)[0]["layer"]
                 if "shape" in layer.get("encoding", {}))  # the legend's entries
    assert "front of TIES (predicted)" in names and "front of task arithmetic (predicted)" in names
    assert any("Dashed lines: the fronts of TIES" in c.value for c in at.caption)
    assert any("Merge method: task arithmetic" in c.value for c in at.caption)


def test_one_unit_on_the_page(app):
    """Accuracies read in percent in the table, on the sliders and in the lines, the ± in the same
    unit; no Python literal (None, nan) reaches the page."""
    at = app.run()
    slider(at, "min", "mid").set_value(slider(at, "min", "mid").min + 1.0).run()
    no_errors(at)
    table = next(m.value for m in at.markdown if m.value.startswith("| task |"))
    rows = [r for r in table.splitlines()[2:]]
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert cells[2].endswith(" %") and cells[3].endswith(" %"), r  # predicted, ± std
    assert "%" in rows[1].split("|")[-2]  # the minimum of mid, in percent like its slider
    assert all("(%)" in s.label for s in at.slider if s.key.startswith("min:"))
    lines = next(m.value for m in at.markdown if m.value.startswith("- ")).splitlines()
    predicted_cells = [float(r.strip("|").split("|")[2].strip().removesuffix(" %")) for r in rows]
    for line, value in zip(lines, predicted_cells):
        assert f"{value:.1f} %" in line or f"{round(value, 1):.1f} %" in line, (line, value)
    text = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
    assert not re.search(r"\b(nan|None|NaN)\b", text)


def test_choice_rows_units():
    from explorer.core.decision import Decision

    d = Decision(0, np.array([0.3, 0.7]), np.array([0.6308, 1.25]), True, np.zeros(2), std=np.array([0.0055, np.nan]))
    rows = app_state.choice_rows(["digits", "loss"], {"digits": "accuracy", "loss": "loss"}, d, None, {"digits": 0.6},
                                 [True, False])
    assert rows[0]["predicted"] == "63.08 %" and rows[0]["± std"] == "0.55 %" and rows[0]["minimum"] == "60.00 %"
    assert rows[1]["predicted"] == 1.25 and rows[1]["± std"] is None and rows[1]["minimum"] is None
    assert "nan" not in app_state.markdown_table(rows) and "None" not in app_state.markdown_table(rows)
