"""Merge methods on a streamed Hugging Face model: τᵢ′ computed once to disk, then merged like task arithmetic,
equal to the in-memory method's merge; the preprocessed experts are reused by the next engine."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from explorer.experiment.experiment import Experiment
from explorer.merging.task_vectors import compute_task_vectors
from tests import llm_models
from tests.llm_models import one_thread, weights  # noqa: F401 (one_thread: autouse fixture)

PROMPTS = {"upper": [{"prompt": "up ab=", "answer": "AB"}], "reverse": [{"prompt": "rev ab=", "answer": "ba"}]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return llm_models.cached_build(tmp_path_factory)


def spec_for(folders, tmp_path, merge: str):
    for name, folder in folders.items():
        if not (tmp_path / name).exists():
            shutil.copytree(folder, tmp_path / name)
    data = {t: llm_models.write_jsonl(tmp_path / f"{t}.jsonl", PROMPTS[t]).name for t in PROMPTS}
    spec = tmp_path / "spec.yaml"
    spec.write_text(llm_models.spec_text("base", {t: t for t in PROMPTS}, data) + f"merge: {merge}\n")
    return spec


@pytest.mark.parametrize("merge", ["{method: tsv}", "{method: cart, rank_ratio: 0.25}",
                                   "{method: consensus, min_tasks: 1}", "{method: ties, lines: {alpha: 0.2, beta: 0.8}}"])
def test_streamed_method_merges_like_the_in_memory_method(folders, tmp_path, merge, capfd):
    spec = spec_for(folders, tmp_path, merge)
    exp = Experiment.from_file(spec)
    c = np.array([0.7, 0.4])
    exp.engine.merger.apply(c)
    assert "preprocessing the experts once" in capfd.readouterr().err
    merged = {k: v.detach() for k, v in exp.engine.model.state_dict().items()}
    base = weights(tmp_path / "base")
    tv = compute_task_vectors({k: v.float() for k, v in base.items()},
                              [{k: v.float() for k, v in weights(tmp_path / t).items()} for t in ("upper", "reverse")],
                              exp.merge_parameters())
    for key, vectors in tv.vectors.items():
        want = base[key].double() + torch.einsum("t,t...->...", torch.tensor(c, dtype=torch.float64), vectors.double())
        got = merged[key].double()
        step = want.abs().clamp_min(1e-3) * 2 ** -7  # one bf16 step of the merged value
        assert torch.all((got - want).abs() <= step), key
    # a second engine (the next process) reads the preprocessed experts and computes nothing again
    folder = exp.cache_dir / exp.key[:24]
    stamp = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    again = Experiment.from_file(spec)
    again.engine.merger.apply(c)
    assert "preprocessing" not in capfd.readouterr().err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == stamp
    for key in tv.vectors:
        assert torch.equal(dict(again.engine.model.state_dict())[key], merged[key])
