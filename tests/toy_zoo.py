"""A small, really trained model family for fast engine tests: an MLP on scikit-learn's digits.

The base is trained briefly on all ten digits; each expert is fine-tuned on one group of classes,
and a task's metric is the accuracy on its own classes (logits restricted to them, like a head).
"""
from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

GROUPS = {"low": [0, 1, 2, 3], "mid": [4, 5, 6], "high": [7, 8, 9]}


def make_mlp(state: dict | None = None) -> torch.nn.Module:
    """The family's factory (spec `model.family: tests.toy_zoo:make_mlp`)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Tanh(), torch.nn.Linear(48, 10))
    if state is not None:
        model.load_state_dict(state)
    return model


@lru_cache(maxsize=None)
def _data(split: str):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    x, y = torch.tensor(x[order] / 16.0, dtype=torch.float32), torch.tensor(y[order])
    n_train = 1000
    return (x[:n_train], y[:n_train]) if split == "train" else (x[n_train:], y[n_train:])


def accuracy(model, classes, split: str = "val", broken: bool = False) -> float:
    """Accuracy on the samples of `classes`, choosing among those classes only.

    Test hooks: `broken` returns NaN (a failing metric); TOY_CALL_LOG appends one line per call;
    TOY_DELAY sleeps, so a test can interrupt a run mid-way.
    """
    if os.environ.get("TOY_CALL_LOG"):
        with open(os.environ["TOY_CALL_LOG"], "a") as fh:
            fh.write(f"{classes}\n")
    if os.environ.get("TOY_DELAY"):
        time.sleep(float(os.environ["TOY_DELAY"]))
    if broken:
        return float("nan")
    x, y = _data(split)
    mask = torch.isin(y, torch.tensor(classes))
    with torch.inference_mode():
        logits = model(x[mask])[:, classes]
    pred = torch.tensor(classes)[logits.argmax(dim=1)]
    return float((pred == y[mask]).float().mean())


def scored(model, classes, split: str = "val", indices=None, wrong_length: bool = False):
    """`accuracy` with per-example scores: with `indices` (positions among the samples of `classes`),
    1.0/0.0 per sample. TOY_INDEX_LOG appends how many examples each call scored."""
    x, y = _data(split)
    mask = torch.isin(y, torch.tensor(classes))
    x, y = x[mask], y[mask]
    if indices is not None:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        x, y = x[idx], y[idx]
    if os.environ.get("TOY_INDEX_LOG"):
        with open(os.environ["TOY_INDEX_LOG"], "a") as fh:
            fh.write(f"{len(y)}\n")
    with torch.inference_mode():
        logits = model(x)[:, classes]
    hits = (torch.tensor(classes)[logits.argmax(dim=1)] == y).double().numpy()
    if indices is None:
        return float(hits.mean())
    return hits[:-1] if wrong_length else hits


def _scored_size(model, classes, split: str = "val", **_ignored) -> int:
    _, y = _data(split)
    return int(torch.isin(y, torch.tensor(classes)).sum())


scored.n_examples = _scored_size


def _train(model, classes, steps: int, lr: float, seed: int) -> None:
    x, y = _data("train")
    mask = torch.isin(y, torch.tensor(classes))
    x, y = x[mask], y[mask]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        idx = torch.randint(len(y), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def build(directory: Path, seed: int = 0) -> Path:
    """Train base and experts into `directory` and write a spec there; returns the spec path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    base = make_mlp()
    _train(base, list(range(10)), steps=8, lr=0.05, seed=seed)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(directory / "base.safetensors"))
    tasks = {}
    for i, (name, classes) in enumerate(GROUPS.items()):
        expert = make_mlp(base.state_dict())
        _train(expert, classes, steps=150, lr=0.05, seed=seed + i + 1)
        save_file({k: v.contiguous() for k, v in expert.state_dict().items()}, str(directory / f"{name}.safetensors"))
        tasks[name] = {"checkpoint": f"{name}.safetensors", "evaluator": "tests.toy_zoo:accuracy",
                       "metric": "accuracy", "params": {"classes": classes}}
    spec = {"name": "toy-digits", "store": "store.sqlite",
            "model": {"family": "tests.toy_zoo:make_mlp", "base": "base.safetensors"},
            "tasks": tasks, "bounds": [0.0, 1.0], "seed": seed}
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
