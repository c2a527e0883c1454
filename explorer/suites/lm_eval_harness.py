"""An lm-evaluation-harness task as a merge-explorer evaluator, run on the in-memory merged model.

`explorer.suites.lm_eval_harness:evaluate` wraps the model the engine merges into (no reload per
point) in lm-eval's `HFLM(pretrained=<model instance>, tokenizer=...)` and calls
`lm_eval.simple_evaluate` on one task; the metric named by `metric` (e.g. `acc`, `acc_norm`,
`exact_match`; `metric,filter` to pick a filter) is returned. Anything else lm-eval's
`simple_evaluate` accepts goes in `options` (e.g. `{gen_kwargs: {max_gen_toks: 16}}`).

Subsets (`evaluation.examples` in the spec): with `indices`, lm-eval's own sample selection
(`simple_evaluate(samples={task: [...]})`, positions among the task's evaluation documents) runs
just those documents and the per-document values of the metric come back, one per index; only for
metrics lm-eval aggregates by their mean (accuracies, exact match), as `n_examples` says.

Tasks are found by lm-eval's TaskManager: built-in names, or YAML files under `include_path`
(a task with `dataset_path: json` and `dataset_kwargs: {data_files: ...}` runs offline on local
files). The evaluation identity covers lm-eval's version, the task's YAML bytes and its
`metadata.version`, and the bytes of local data files it names, so a changed task is a new task.
Requires the `lm-eval` extra (`pip install 'merge-explorer[lm-eval]'`).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import yaml

_LMS: dict[tuple, tuple] = {}
_MANAGERS: dict[tuple, object] = {}
_TASKS: dict[tuple, tuple] = {}


def _resolve(path: str | None, spec_dir) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() or spec_dir is None else Path(spec_dir) / p


class _Lenient(yaml.SafeLoader):
    """Reads lm-eval YAML (which may hold `!function` tags) just to look at plain fields."""


_Lenient.add_multi_constructor("!", lambda loader, suffix, node: None)


def _local_yaml(task: str, include_path: Path | None) -> Path | None:
    if include_path is None:
        return None
    files = [include_path] if include_path.is_file() else sorted(include_path.rglob("*.yaml"))
    for f in files:
        try:
            cfg = yaml.load(f.read_text(), Loader=_Lenient)  # noqa: S506 - a SafeLoader subclass
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(cfg, dict) and cfg.get("task") == task:
            return f
    return None


def task_yaml(task: str, include_path: Path | None) -> Path | None:
    """The YAML file that defines `task`: under `include_path`, else among lm-eval's own tasks."""
    local = _local_yaml(task, include_path)
    if local is not None:
        return local
    entry = _manager(include_path, True).task_index.get(task)
    return Path(entry.yaml_path) if entry is not None and entry.yaml_path else None


def _manager(include_path: Path | None, defaults: bool):
    """lm-eval's TaskManager, built once (indexing lm-eval's own tasks takes a while: only if needed)."""
    from lm_eval.tasks import TaskManager

    key = (str(include_path) if include_path else None, defaults)
    tm = _MANAGERS.get(key)
    if tm is None:
        tm = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=defaults)
        _MANAGERS[key] = tm
    return tm


def _task(task: str, include_path: Path | None):
    """The lm-eval Task object, loaded (with its dataset) once per process."""
    key = (task, str(include_path) if include_path else None)
    obj = _TASKS.get(key)
    if obj is None:
        tm = _manager(include_path, _local_yaml(task, include_path) is None)
        try:
            obj = tm.load([task])["tasks"][task]
        except KeyError:
            raise ValueError(f"lm-eval task {task!r} not found" + (f" under {include_path}" if include_path else "")) from None
        _TASKS[key] = (tm, obj)
        return tm, obj
    return obj


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(*, task: str, include_path: str | None = None, metric: str = "acc", limit=None, num_fewshot=None,
                options: dict | None = None, lm_options: dict | None = None, spec_dir=None, **_ignored) -> str:
    """lm-eval's version, the task YAML's bytes and version, and its local data files' bytes."""
    import lm_eval

    inc = _resolve(include_path, spec_dir)
    parts = [f"lm-eval:{getattr(lm_eval, '__version__', '?')}", f"task={task}", f"metric={metric}",
             f"limit={limit}", f"fewshot={num_fewshot}", f"options={sorted((options or {}).items())!r}",
             f"lm_options={sorted((lm_options or {}).items())!r}"]
    path = task_yaml(task, inc)
    if path is None:
        raise ValueError(f"lm-eval task {task!r} not found" + (f" under {inc}" if inc else ""))
    cfg = yaml.load(path.read_text(), Loader=_Lenient) or {}  # noqa: S506
    parts.append(f"yaml={_digest(path)}")
    parts.append(f"task_version={(cfg.get('metadata') or {}).get('version')}")
    files = ((cfg.get("dataset_kwargs") or {}).get("data_files")) or {}
    for name in sorted(files) if isinstance(files, dict) else []:
        for ref in files[name] if isinstance(files[name], list) else [files[name]]:
            f = Path(str(ref)).expanduser()
            f = f if f.is_absolute() else path.parent / f
            parts.append(f"data[{name}]={_digest(f) if f.is_file() else 'missing:' + str(ref)}")
    return ";".join(parts)


def _lm(model, tokenizer, batch_size: int, lm_options: dict):
    """lm-eval's HFLM around the in-memory model, built once per model object and options."""
    from lm_eval.models.huggingface import HFLM

    key = (id(model), batch_size, repr(sorted(lm_options.items())))
    cached = _LMS.get(key)
    if cached is not None and cached[0] is model:
        return cached[1]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              device=str(next(model.parameters()).device), **lm_options)
    _LMS[key] = (model, lm)
    return lm


def evaluate(model, *, task: str, metric: str = "acc", include_path: str | None = None, limit: int | None = None,
             num_fewshot: int | None = None, batch_size: int = 16, options: dict | None = None,
             lm_options: dict | None = None, tokenizer: str | None = None, spec_dir=None, indices=None):
    """The task's `metric` for the model as it is now (the engine has just merged into it).

    options: more keyword arguments for `lm_eval.simple_evaluate`; lm_options: for lm-eval's
    `HFLM` (e.g. `{add_bos_token: true}` for models trained with a BOS token). indices: positions
    among the task's evaluation documents (below `n_examples`): their per-document values instead.
    """
    from lm_eval import simple_evaluate

    from .lm import tokenizer_for

    tok = tokenizer_for(model, tokenizer, spec_dir)
    inc = _resolve(include_path, spec_dir)
    quiet = [logging.getLogger(n) for n in ("lm-eval", "lm_eval", "datasets")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    was_training = model.training
    rows = None
    if indices is not None:
        n = n_examples(model, task=task, metric=metric, include_path=include_path, limit=limit, spec_dir=spec_dir)
        if n is None:
            raise ValueError(f"lm-eval task {task!r}: metric {metric!r} is not a mean over documents and cannot be "
                             "measured on a subset")
        rows = [int(i) for i in np.asarray(indices, dtype=np.int64).ravel()]
        if rows and (min(rows) < 0 or max(rows) >= n):
            raise ValueError(f"indices must be positions in the {n} documents of lm-eval task {task!r}")
        if not rows:
            return np.zeros(0)
    try:
        manager, task_obj = _task(task, inc)
        selection = {"samples": {task: sorted(set(rows))}, "limit": None, "log_samples": True} if rows else \
            {"limit": limit, "log_samples": False}
        results = simple_evaluate(model=_lm(model, tok, batch_size, lm_options or {}), tasks=[task_obj], task_manager=manager,
                                  num_fewshot=num_fewshot, bootstrap_iters=0, **selection, **(options or {}))
    finally:
        model.train(was_training)
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    values = results["results"].get(task)
    if values is None:
        raise ValueError(f"lm-eval returned no results for task {task!r}")
    key = metric if "," in metric else next((k for k in values if k.split(",")[0] == metric), None)
    if key is None or key not in values:
        have = sorted({k.split(",")[0] for k in values if not k.endswith("_stderr") and k != "alias"} - {"sample_len"})
        raise ValueError(f"lm-eval task {task!r} has no metric {metric!r}; it reports {', '.join(have)}")
    if rows is None:
        return float(values[key])
    name, _, wanted_filter = key.partition(",")
    per_doc = {}
    for sample in results["samples"][task]:
        if not wanted_filter or sample.get("filter") == wanted_filter:
            per_doc[int(sample["doc_id"])] = float(sample[name])
    return np.array([per_doc[i] for i in rows], dtype=float)


def n_examples(model, *, task: str, metric: str = "acc", include_path: str | None = None, limit=None, spec_dir=None,
               **_ignored) -> int | None:
    """How many documents `evaluate` scores (the task's evaluation split, within `limit`); None when
    lm-eval does not aggregate `metric` by its mean (a subset's mean would not estimate it)."""
    from lm_eval.api.metrics import mean

    _, task_obj = _task(task, _resolve(include_path, spec_dir))
    aggregation = task_obj.aggregation().get(metric.split(",")[0])
    if aggregation is not mean:
        return None
    n = len(task_obj.eval_docs)
    if limit is not None:
        n = min(n, int(limit) if float(limit) >= 1 else int(float(limit) * n))
    return n


evaluate.fingerprint = fingerprint  # type: ignore[attr-defined]
evaluate.n_examples = n_examples  # type: ignore[attr-defined]
#: Versioned by hand from here on (bump it when a change alters a score); the source hash before
#: `indices` came measured the same, so results stored under it are served.
evaluate.version = "lm-eval-harness-1"  # type: ignore[attr-defined]
evaluate.previous_versions = (  # type: ignore[attr-defined]
    "source:5835da8559a6595027bca165eb22a4d40f28820fa591a9a21873ca4878e81d42",
)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
