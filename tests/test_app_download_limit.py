"""The app's download size limit, driven headless with streamlit.testing.v1.AppTest.

A merged checkpoint over the limit is not offered as a download (that builds it in the server's
memory); the app writes it on the server under the workspace and shows the path: merged.safetensors
for a state-dict family (the toy experiment), a Hugging Face folder for hf_causal_lm. Present mode
writes nothing. The limit is set tiny so that tiny real models exceed it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from explorer import app_state  # noqa: E402
from tests import llm_models  # noqa: E402
from tests.app_tables import chosen_table  # noqa: E402
from tests.llm_models import assert_merge_of, one_thread, weights  # noqa: E402,F401 (one_thread: autouse fixture)

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 180
WRITE = "Write the merged checkpoint on the server"


@pytest.fixture(scope="module")
def toy_spec(tmp_path_factory) -> Path:
    from explorer.experiment.experiment import Experiment
    from tests.toy_zoo import build

    spec = build(tmp_path_factory.mktemp("toy"))
    Experiment.from_file(spec).run(progress=False)
    return spec


@pytest.fixture(scope="module")
def llm_spec(tmp_path_factory) -> Path:
    """The tiny hf_causal_lm experiment (two skills), run once."""
    from explorer.experiment.experiment import Experiment

    root = tmp_path_factory.mktemp("llm-app")
    for name, folder in llm_models.cached_build(tmp_path_factory).items():
        shutil.copytree(folder, root / name)
    prompts = {s: [{"prompt": f"{'up' if s == 'upper' else 'rev'} {w}=", "answer": w.upper() if s == "upper" else w[::-1]}
                   for w in ("ab", "cd", "ef")] for s in ("upper", "reverse")}
    data = {t: llm_models.write_jsonl(root / f"{t}.jsonl", p).name for t, p in prompts.items()}
    spec = root / "spec.yaml"
    spec.write_text(llm_models.spec_text("base", {t: t for t in prompts}, data))
    Experiment.from_file(spec).run(progress=False)
    return spec


def app_for(spec: Path, workspace: Path, monkeypatch, limit: str | None = "1KB") -> AppTest:
    monkeypatch.setenv(app_state.SPEC_ENV, str(spec))
    monkeypatch.setenv(app_state.WORKSPACE_ENV, str(workspace))
    monkeypatch.delenv(app_state.STORE_ENV, raising=False)
    monkeypatch.delenv(app_state.PRESENT_ENV, raising=False)
    if limit is None:
        monkeypatch.delenv(app_state.DOWNLOAD_LIMIT_ENV, raising=False)
    else:
        monkeypatch.setenv(app_state.DOWNLOAD_LIMIT_ENV, limit)
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def no_errors(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def chosen(at) -> np.ndarray:
    return chosen_table(at)["coefficient"].to_numpy(dtype=float)


def written_path(at) -> Path:
    lines = [s.value for s in at.success if s.value.startswith("Merged checkpoint written on the server")]
    assert len(lines) == 1, [s.value for s in at.success]
    return Path(lines[0].split("`")[1])


def test_sizes_parse_and_a_bad_limit_is_named_in_one_line(toy_spec, tmp_path, monkeypatch):
    assert app_state.parse_size("2GiB") == 2 << 30 and app_state.parse_size("500 MB") == 500_000_000
    assert app_state.parse_size("1000") == 1000 and app_state.app_args([], {}).download_limit == 2 << 30
    assert app_state.app_args(["--download-limit", "1.5KiB"], {}).download_limit == 1536
    at = app_for(toy_spec, tmp_path, monkeypatch, limit="lots").run()
    assert [e.value for e in at.error] == [f"${app_state.DOWNLOAD_LIMIT_ENV} 'lots': not a size "
                                           "(write e.g. 2GiB, 500MB or a number of bytes)"]


def test_under_the_limit_the_checkpoint_is_a_download_and_nothing_is_written(toy_spec, tmp_path, monkeypatch):
    at = app_for(toy_spec, tmp_path, monkeypatch, limit=None).run()  # the default, 2 GiB
    no_errors(at)
    assert "merged.safetensors" in {b.label for b in at.get("download_button")}
    assert WRITE not in {b.label for b in at.button}
    assert not (tmp_path / app_state.SERVER_EXPORTS_DIR).exists()


def test_over_the_limit_the_state_dict_merge_is_written_under_the_workspace(toy_spec, tmp_path, monkeypatch):
    from explorer import cli

    at = app_for(toy_spec, tmp_path, monkeypatch).run()
    no_errors(at)
    assert {b.label for b in at.get("download_button")} == {"coefficients.json", "mergekit.yaml", "report.html",
                                                             "explorer.html"}
    assert [c.value for c in at.caption if "over this server's download limit (1000 B" in c.value]
    at.button(key="write_ckpt").click().run()
    no_errors(at)
    path = written_path(at)
    assert path.name == "merged.safetensors" and path.is_relative_to(tmp_path / app_state.SERVER_EXPORTS_DIR)
    doc = json.loads((path.parent / "coefficients.json").read_text())
    c = [doc["coefficients"][t] for t in doc["tasks"]]
    assert np.allclose(c, chosen(at), atol=1e-4)  # the table rounds to 4 decimals
    assert (path.parent / "mergekit.yaml").is_file()
    assert not list(path.parent.parent.glob(".*.partial"))  # renamed into place, nothing half-written left
    # the same tensors `merge-explorer export` writes for this choice
    out = tmp_path / "cli"
    prefs = ",".join(f"{t}={w}" for t, w in doc["preferences"]["weights"].items())
    assert cli.main(["export", str(toy_spec), "--weights", prefs, "--out", str(out)]) == 0
    assert np.allclose(json.loads((out / "coefficients.json").read_text())["coefficients"]["low"], c[0])
    ours, theirs = weights(path), weights(out / "merged.safetensors")
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # a later visit with the same choice finds it written: the path, no button
    again = app_for(toy_spec, tmp_path, monkeypatch).run()
    no_errors(again)
    assert written_path(again) == path and WRITE not in {b.label for b in again.button}


def test_over_the_limit_an_hf_causal_lm_merge_is_written_as_a_model_folder(llm_spec, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    at = app_for(llm_spec, tmp_path, monkeypatch).run()
    no_errors(at)
    assert "merged.safetensors" not in {b.label for b in at.get("download_button")}
    at.button(key="write_ckpt").click().run()
    no_errors(at)
    path = written_path(at)
    assert path.name == "merged" and path.is_relative_to(tmp_path / app_state.SERVER_EXPORTS_DIR)
    for name in ("config.json", "tokenizer.json", "model.safetensors.index.json"):
        assert (path / name).is_file(), name
    doc = json.loads((path.parent / "coefficients.json").read_text())
    c = [doc["coefficients"][t] for t in doc["tasks"]]
    assert doc["tasks"] == ["upper", "reverse"] and np.allclose(c, chosen(at), atol=1e-4)
    merged = weights(path)
    assert all(v.dtype == torch.bfloat16 for v in merged.values())
    assert_merge_of(merged, llm_spec.parent, c)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype="auto")
    assert model.dtype == torch.bfloat16


def test_present_mode_writes_no_checkpoint_whatever_the_limit(toy_spec, tmp_path, monkeypatch):
    app = app_for(toy_spec, tmp_path, monkeypatch)
    monkeypatch.setenv(app_state.PRESENT_ENV, "1")
    at = app.run()
    no_errors(at)
    assert WRITE not in {b.label for b in at.button}
    assert "merged.safetensors" not in {b.label for b in at.get("download_button")}
    assert not (tmp_path / app_state.SERVER_EXPORTS_DIR).exists()
