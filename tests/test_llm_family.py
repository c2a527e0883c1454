"""family: hf_causal_lm end to end through the CLI: run -> pick -> export -> reload, and bad input."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from explorer.cli import main
from tests import llm_models
from tests.llm_models import assert_merge_of, one_thread, weights  # noqa: F401 (one_thread: autouse fixture)

PROMPTS = {
    "upper": [{"prompt": f"up {w}=", "answer": w.upper()} for w in ("ab", "cd", "ef", "gh")],
    "reverse": [{"prompt": f"rev {w}=", "answer": w[::-1]} for w in ("ab", "cd", "ef", "gh")],
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return llm_models.cached_build(tmp_path_factory)


@pytest.fixture
def experiment(folders, tmp_path):
    """A spec over copies of the tiny base and experts, with JSONL prompts per task."""
    for name, folder in folders.items():
        shutil.copytree(folder, tmp_path / name)
    data = {t: llm_models.write_jsonl(tmp_path / f"{t}.jsonl", PROMPTS[t]).name for t in PROMPTS}
    spec = tmp_path / "spec.yaml"
    spec.write_text(llm_models.spec_text("base", {t: t for t in PROMPTS}, data))
    return spec


def test_run_pick_export_reload_round_trip(experiment, capsys):
    from transformers import AutoModelForCausalLM

    from explorer.lm_suite import evaluate

    root = experiment.parent
    assert main(["run", str(experiment), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "merge memory: resident" in out.err  # the mode is printed at start
    assert main(["pick", str(experiment), "--weights", "upper=3,reverse=1"]) == 0
    assert main(["export", str(experiment), "--weights", "upper=3,reverse=1", "--out", str(root / "export")]) == 0
    doc = json.loads((root / "export" / "coefficients.json").read_text())
    c = np.array([doc["coefficients"]["upper"], doc["coefficients"]["reverse"]])
    merged_dir = root / "export" / "merged"
    # a Hugging Face folder: config and tokenizer copied, weights sharded like the base
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"):
        assert (merged_dir / name).is_file(), name
    assert len(list(merged_dir.glob("model-*.safetensors"))) == len(list((root / "base").glob("model-*.safetensors")))
    assert_merge_of(weights(merged_dir), root, c)
    # the folder reloads with transformers, and measures what the explorer measured there
    model = AutoModelForCausalLM.from_pretrained(str(merged_dir), local_files_only=True, dtype="auto")
    assert model.dtype == torch.bfloat16
    assert main(["verify", str(experiment), "--weights", "upper=3,reverse=1"]) == 0
    from explorer.experiment.experiment import Experiment

    verified = Experiment.from_file(experiment).stored(c)  # what verify measured in memory, from the store
    assert verified["upper"] == pytest.approx(evaluate(model, data=str(root / "upper.jsonl"), batch_size=4), abs=1e-12)
    assert verified["reverse"] == pytest.approx(evaluate(model, data=str(root / "reverse.jsonl"), batch_size=4), abs=1e-12)


def test_expert_at_unit_coefficient_is_the_expert_bit_for_bit(experiment):
    from explorer.experiment.experiment import Experiment

    exp = Experiment.from_file(experiment)
    model = exp.engine.model
    expert = weights(experiment.parent / "reverse")
    exp.engine.merger.apply([0.0, 1.0])
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expert.items())


def _run_error(spec: Path, capsys) -> str:
    assert main(["run", str(spec), "--no-progress"]) == 2
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("merge memory:")]
    assert len(lines) == 1 and lines[0].startswith("error: ")  # one line (after the memory mode, if it got there)
    return lines[0]


def _evaluations(spec: Path) -> int:
    db = spec.parent / "store.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        return con.execute("select count(*) from evaluations").fetchone()[0] if "evaluations" in tables else 0


def test_tokenizer_mismatch_is_named_in_one_line(experiment, capsys):
    from explorer.demo.llm_zoo import char_tokenizer

    folder = experiment.parent / "reverse"
    other = char_tokenizer("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ=+ \n")  # '=' moved
    other.save_pretrained(folder)
    err = _run_error(experiment, capsys)
    assert "tasks.reverse.checkpoint" in err and "tokenizer differs" in err and "token" in err
    assert _evaluations(experiment) == 0


def test_expert_of_another_architecture_is_named(experiment, capsys):
    cfg_path = experiment.parent / "upper" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_hidden_layers"] = 3
    cfg_path.write_text(json.dumps(cfg))
    err = _run_error(experiment, capsys)
    assert "tasks.upper.checkpoint" in err and "num_hidden_layers = 3" in err


def test_nan_in_an_expert_tensor_is_named(experiment, capsys):
    shard = sorted((experiment.parent / "upper").glob("model-*.safetensors"))[0]
    state = load_file(str(shard))
    key = sorted(state)[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(shard), metadata={"format": "pt"})
    err = _run_error(experiment, capsys)
    assert key in err and "NaN" in err and "upper" in err
    assert _evaluations(experiment) == 0


def test_folder_without_config_and_pickled_weights_are_refused(experiment, capsys):
    (experiment.parent / "upper" / "config.json").unlink()
    err = _run_error(experiment, capsys)
    assert "tasks.upper.checkpoint" in err and "config.json" in err
    shutil.copy(experiment.parent / "base" / "config.json", experiment.parent / "upper" / "config.json")
    for f in (experiment.parent / "upper").glob("model*"):
        f.unlink()
    torch.save({"w": torch.zeros(1)}, experiment.parent / "upper" / "pytorch_model.bin")
    err = _run_error(experiment, capsys)
    assert "pytorch_model.bin" in err and "safetensors" in err


def test_unknown_family_is_refused_with_a_suggestion(experiment, capsys):
    experiment.write_text(experiment.read_text().replace("family: hf_causal_lm", "family: hf_causal"))
    err = _run_error(experiment, capsys)
    assert "did you mean 'hf_causal_lm'" in err
