"""Exporting a chosen merge: coefficients.json, mergekit.yaml and merged.safetensors.

The JSON makes a choice reproducible (content hashes of every checkpoint, method, parameters,
package version); the mergekit config rebuilds it with mergekit; the safetensors file is the merged
checkpoint itself, with the base's key names and dtypes.

mergekit's own `ties` and `dare_linear` are not merge-explorer's (weighted sign election,
`normalize`, other random masks), so exactness comes from one rule: mergekit runs
`task_arithmetic` with `normalize: false` and weight = MAP coefficient, which computes
θ₀ + Σ cᵢ (θᵢ − θ₀). Where merge-explorer's τᵢ′ is not θᵢ − θ₀ of a file mergekit can read
(TIES, DARE, a merge prefix, a checkpoint mergekit cannot open), the export writes the
preprocessed experts θ₀ + τᵢ′ beside the config, named by content hash, and points the config at
them: in the base's dtype where that is exact (task arithmetic, TIES: each entry is θᵢ's or θ₀'s),
in float32 where it is not (DARE's rescaled survivors), streamed tensor by tensor. Hugging Face
model folders go to `mergekit-yaml`, raw state dicts (open_clip and the like) to `mergekit-pytorch`.
Arithmetic is float32 (`dtype`), the output takes the base's dtype (`out_dtype`).
"""
from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from explorer.core.decision import Decision
from explorer.experiment.families.registry import lookup as lookup_family
from explorer.experiment.spec import resolve
from explorer.merging.checkpoints import checkpoint_files, content_hash, load_state_dict
from explorer.merging.hf_folder import SafetensorsStreamWriter, copy_side_files
from explorer.merging.methods import get_method
from explorer.version import __version__
from explorer.vouch import decision_reason, surrogate_family

INPUTS_DIR = "mergekit-inputs"
#: Largest relative L2 error ‖cast(θ₀ + τᵢ′) − (θ₀ + τᵢ′)‖ / ‖τᵢ′‖ at which preprocessed experts are written
#: in the base's dtype rather than float32 (the exports' exactness bar).
MAX_CAST_GAP = 1e-5
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass
class MergekitPlan:
    """What the exported config does: which tool, which files, and whether it is exact."""

    entry_point: str                       # "mergekit-yaml" (HF folders) or "mergekit-pytorch" (raw files)
    config: dict
    exact: bool
    how: str                               # one line: what was done, or why it is not exact
    inputs: dict[str, dict] = field(default_factory=dict)  # written files: name -> {path, sha256}

    @property
    def reads_inputs(self) -> bool:
        """False only where mergekit reads the original checkpoints (exact task arithmetic)."""
        return not (self.exact and not self.inputs)


# --------------------------------------------------------------------------- coefficients.json


#: What the measured numbers in coefficients.json mean (the exported point was chosen on them).
VALIDATION_NOTE = ("The choice was made on validation data (the evaluators' params in the spec): `measured` is on "
                   "that data, so it flatters the chosen point; `test_split` is held out from every choice.")


def coefficients_document(experiment, result, decision: Decision, weights=None, minimums=None,
                          plan: MergekitPlan | None = None, measured=None, test_split=None,
                          polish: dict | None = None) -> dict:
    """Everything needed to reproduce and audit the choice.

    measured: (T,) metrics of the exported point as measured on the validation data (None: not
    measured yet); test_split: ({task: value or None}, {task: note}) on held-out data
    (explorer.experiment.holdout); polish: how the point was polished (`merge-explorer export --polish`).
    """
    spec, tasks = experiment.spec, experiment.tasks
    std = decision.std if decision.std is not None else result.predict(decision.coefficients, return_std=True)[1][0]
    test_values, test_notes = test_split if test_split is not None else ({t: None for t in tasks}, {})
    doc = {
        "experiment": spec.name,
        "experiment_key": experiment.key,
        "tasks": tasks,
        "coefficients": {t: float(c) for t, c in zip(tasks, decision.coefficients)},
        "predicted": {t: float(v) for t, v in zip(tasks, decision.predicted)},
        "predicted_std": {t: (float(v) if np.isfinite(v) else None) for t, v in zip(tasks, std)},
        "vouched_for": bool(decision.trusted),
        "not_vouched_for": decision_reason(result, decision),
        "measured": None if measured is None else {t: float(v) for t, v in zip(tasks, measured)},
        "test_split": {"metrics": {t: test_values.get(t) for t in tasks}, "notes": {t: test_notes[t] for t in tasks
                                                                                    if t in test_notes}},
        "note": VALIDATION_NOTE if measured is not None else
        "Not measured yet: `merge-explorer export` (or the app's Verify) measures the exported point.",
        "metrics": {t: spec.tasks[t].metric for t in tasks},
        "higher_is_better": {t: bool(s > 0) for t, s in zip(tasks, experiment.senses)},
        "surrogate_r2_cv": {t: float(result.surrogates[t].r2_cv_) for t in tasks},
        "surrogate_family": {t: surrogate_family(result.surrogates[t]) for t in tasks},
        "preferences": {"weights": weights, "minimums": minimums, "feasible": bool(decision.feasible)},
        "bounds": experiment.bounds.tolist(),
        "merge": experiment.merge_parameters(),
        "merge_prefix": spec.model.merge_prefix,
        "checkpoints": {
            "base": {"path": str(resolve(experiment.spec_dir, spec.model.base)), "sha256": experiment.checkpoint_hashes["base"]},
            **{t: {"path": str(resolve(experiment.spec_dir, spec.tasks[t].checkpoint)), "sha256": experiment.checkpoint_hashes[t]}
               for t in tasks},
        },
        "model": {"family": spec.model.family, "architecture": spec.model.architecture},
        "package": {"name": "merge-explorer", "version": __version__},
    }
    if polish is not None:
        doc["polish"] = polish
    if plan is not None:
        doc["mergekit"] = {"entry_point": plan.entry_point, "command": f"{plan.entry_point} mergekit.yaml OUTPUT_DIR",
                           "exact": plan.exact, "how": plan.how, "inputs": plan.inputs}
    return doc


# --------------------------------------------------------------------------- reading checkpoints cheaply


def _safetensors_dtypes(path: Path) -> dict[str, str]:
    """{key: safetensors dtype code} from the file's JSON header, without reading any tensor."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _base_float_dtypes(experiment) -> set[str]:
    """The floating dtypes of the base's tensors (from the loaded engine, headers, or a load)."""
    if experiment.loaded:
        return {str(t.dtype).removeprefix("torch.") for t in experiment.engine.base.values() if t.is_floating_point()}
    base = resolve(experiment.spec_dir, experiment.spec.model.base)
    files = checkpoint_files(base)
    if all(f.suffix == ".safetensors" for f in files):
        codes = {c for f in files for c in _safetensors_dtypes(f).values()}
        return {SAFETENSORS_DTYPES.get(c, c) for c in codes if c.startswith(("F", "BF"))}
    state = load_state_dict(base, experiment.spec.model.trust_pickle)
    return {str(t.dtype).removeprefix("torch.") for t in state.values() if t.is_floating_point()}


def _readable_as_is(path: Path, hf: bool) -> bool:
    """Can mergekit read this checkpoint with the same tensor names merge-explorer uses?"""
    files = checkpoint_files(path)
    if not all(f.suffix == ".safetensors" for f in files):
        return False
    if hf:
        return _is_hf_folder(path)
    if path.is_dir() or len(files) != 1:
        return False  # mergekit-pytorch reads one file
    keys = list(_safetensors_dtypes(files[0]))
    return not (keys and all(k.startswith("module.") for k in keys))  # merge-explorer strips that prefix


def _non_float_tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in checkpoint_files(path):
        codes = _safetensors_dtypes(f)
        with safe_open(str(f), framework="pt") as st:
            out.update({k: st.get_tensor(k) for k, c in codes.items() if not c.startswith(("F", "BF"))})
    return out


def _buffers_agree(base: Path, experts: list[Path]) -> bool:
    """mergekit refuses integer buffers that differ between inputs; merge-explorer keeps the base's."""
    want = _non_float_tensors(base)
    for p in experts:
        have = _non_float_tensors(p)
        if have.keys() != want.keys() or any(not torch.equal(have[k], want[k]) for k in want):
            return False
    return True


# --------------------------------------------------------------------------- writing mergekit's inputs


def iter_preprocessed(engine) -> Iterator[tuple[str, torch.Tensor | None, list[torch.Tensor]]]:
    """(key, θ₀ in float32 or None, [θ₀ + τᵢ′ per expert]) for every base tensor, one key at a time
    (θ₀ as it is, and None, where merge-explorer does not merge): from the task vectors held in memory,
    or recomputed per tensor from the files by a streaming merger. Never the whole model in float32."""
    if engine.task_vectors is not None:
        return engine.task_vectors.iter_preprocessed(engine.base)
    return engine.merger.iter_preprocessed()


def _merged_keys(engine) -> set[str]:
    return set(engine.task_vectors.keys) if engine.task_vectors is not None else set(engine.merger.keys)


def _base_dtype_may_be_exact(merge) -> bool:
    """θ₀ + τᵢ′ is θᵢ or θ₀ entry by entry for task arithmetic and TIES (trimmed entries are 0), both
    already in the base's dtype; DARE's survivors θ₀ + τᵢ/density are not, unless density is 1, nor are
    the other methods' (low-rank, orthogonalised or scaled τ′). The export measures the cast either way."""
    if merge.lines is not None:
        return False
    return merge.method in ("task_arithmetic", "ties") or (merge.method == "dare" and merge.density >= 1.0)


def _write_experts(engine, names: list[str], inputs_dir: Path, hf_base: Path | None,
                   narrow: bool) -> tuple[list[Path], list[float]]:
    """θ₀ + τᵢ′ into `.<name>.partial` files or folders, merged tensors in the base's dtype (`narrow`) or
    float32. Returns the partial paths and, per expert, the relative L2 error that casting θ₀ + τᵢ′ to
    the base's dtype makes (‖cast(θ₀ + τᵢ′) − (θ₀ + τᵢ′)‖ / ‖τᵢ′‖), measured on the way either way."""
    merged = _merged_keys(engine)
    specs = [(k, (t.dtype if narrow else torch.float32) if k in merged else t.dtype, tuple(t.shape))
             for k, t in engine.base.items()]
    meta = {"format": "pt", "merge-explorer": __version__}
    partial = []
    for name in names:
        tmp = inputs_dir / f".{name}.partial"
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()
        if hf_base is not None:
            tmp.mkdir()
            copy_side_files(hf_base, tmp)
        partial.append(tmp)
    writers = [SafetensorsStreamWriter(t / "model.safetensors" if hf_base else t, specs, meta) for t in partial]
    err = [0.0] * len(names)
    size = [0.0] * len(names)
    dtypes = {k: t.dtype for k, t in engine.base.items()}
    try:
        for key, b, tensors in iter_preprocessed(engine):
            for i, (w, t) in enumerate(zip(writers, tensors)):
                if b is not None:
                    cast = t.to(dtypes[key])
                    err[i] += float((cast.to(torch.float32) - t).double().pow(2).sum())
                    size[i] += float((t - b).double().pow(2).sum())
                    t = cast if narrow else t
                w.append(key, t)
        for w in writers:
            w.close()
    finally:
        for w in writers:
            w.fh.close()
    return partial, [(e / s) ** 0.5 if s > 0 else (0.0 if e == 0 else float("inf")) for e, s in zip(err, size)]


def write_preprocessed_experts(engine, names: list[str], inputs_dir: Path, hf_base: Path | None,
                               try_base_dtype: bool = True) -> dict[str, dict]:
    """Write θ₀ + τᵢ′ for every expert, streamed tensor by tensor, each named by its content hash:
    `<name>-<sha12>.safetensors`, or for Hugging Face models `<name>-<sha12>/` with the base's
    config and tokenizer files. An input already there with the same hash is reused.

    Merged tensors are written in the base's dtype when that is exact (every expert's cast error
    within MAX_CAST_GAP relative L2: half the size of float32, mergekit reads the same numbers);
    otherwise (DARE, or a measured cast error over the bound) in float32. Each record says which
    dtype was written and the cast error measured (`cast_gap`, the error the base's dtype makes)."""
    inputs_dir.mkdir(parents=True, exist_ok=True)
    dtypes = {t.dtype for k, t in engine.base.items() if k in _merged_keys(engine)}
    narrow = try_base_dtype and dtypes != {torch.float32}
    partial, gaps = _write_experts(engine, names, inputs_dir, hf_base, narrow)
    if narrow and max(gaps) > MAX_CAST_GAP:  # not exact in the base's dtype after all: write float32
        for tmp in partial:
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        narrow = False
        partial, gaps = _write_experts(engine, names, inputs_dir, hf_base, narrow)
    written = (next(iter(dtypes)) if narrow else torch.float32)
    out = {}
    for name, tmp, gap in zip(names, partial, gaps):
        digest = content_hash(tmp)
        final = inputs_dir / (f"{name}-{digest[:12]}" + ("" if hf_base else ".safetensors"))
        if final.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        else:
            tmp.rename(final)
        out[name] = {"path": str(final), "sha256": digest, "dtype": str(written).removeprefix("torch."),
                     "cast_gap": gap}
    return out


def write_base_copy(engine, inputs_dir: Path) -> dict:
    """θ₀ as one plain safetensors file, for a base mergekit-pytorch cannot read as it is."""
    inputs_dir.mkdir(parents=True, exist_ok=True)
    tmp = inputs_dir / ".base.partial"
    save_file({k: v.detach().clone().contiguous() for k, v in engine.base.items()}, str(tmp),
              metadata={"format": "pt", "merge-explorer": __version__})
    digest = content_hash(tmp)
    final = inputs_dir / f"base-{digest[:12]}.safetensors"
    if final.exists():
        tmp.unlink()
    else:
        tmp.rename(final)
    return {"path": str(final), "sha256": digest}


# --------------------------------------------------------------------------- the plan


def describe_merge(params: dict) -> str:
    """The method's preprocessing in words, and LiNeS scaling when it is on."""
    text = get_method(params["method"]).describe(params)
    if "lines" in params:
        text += (f", then LiNeS layer scaling (each τᵢ′ times {params['lines']['alpha']:g} + "
                 f"{params['lines']['beta']:g}·depth, depth 0 at the first block and 1 at the last)")
    return text


def _describe_input_dtype(records: dict[str, dict], base_dtype: str) -> str:
    """Which dtype the preprocessed experts were written in, and why (the measured cast error)."""
    written = {r["dtype"] for r in records.values()}.pop()
    gap = max(r["cast_gap"] for r in records.values())
    if written == base_dtype:
        return (f"written in {written}, the base's dtype (exact: casting θ₀ + τᵢ′ to it moves them by "
                f"{gap:.1e} of ‖τᵢ′‖, bound {MAX_CAST_GAP:g})")
    if base_dtype == "float32":
        return "written in float32, the base's dtype"
    return (f"written in float32 because {base_dtype} would not be exact (casting θ₀ + τᵢ′ to it moves them by "
            f"{gap:.1e} of ‖τᵢ′‖, bound {MAX_CAST_GAP:g})")


def plan_mergekit(experiment, coefficients: np.ndarray, out_dir: Path | None = None) -> MergekitPlan:
    """Choose the exact route and build the config; writes mergekit's inputs only when `out_dir` is given."""
    spec = experiment.spec
    merge, prefix = spec.merge, spec.model.merge_prefix
    base = resolve(experiment.spec_dir, spec.model.base)
    experts = [resolve(experiment.spec_dir, spec.tasks[t].checkpoint) for t in experiment.tasks]
    hf = _is_hf_folder(base)
    entry = "mergekit-yaml" if hf else "mergekit-pytorch"
    dtypes = _base_float_dtypes(experiment)
    out_dtype = next(iter(dtypes)) if len(dtypes) == 1 else None

    def config(base_ref, expert_refs, method, density: bool) -> dict:
        models = []
        for ref, c in zip(expert_refs, coefficients):
            params = {"weight": float(c)}
            if density:
                params["density"] = float(merge.density)
            models.append({"model": str(ref), "parameters": params})
        cfg = {"merge_method": method, "base_model": str(base_ref), "models": models,
               "parameters": {"normalize": False}, "dtype": "float32"}
        if out_dtype:
            cfg["out_dtype"] = out_dtype
        return cfg

    artifact = lookup_family(spec.model.family).artifact  # "merged/" for model folders, else "merged.safetensors"

    method_impl = get_method(merge.method)
    params = experiment.merge_parameters()

    def native(reason: str) -> MergekitPlan:
        method = method_impl.mergekit or "task_arithmetic"  # mergekit's nearest; for methods it lacks, plain TA
        return MergekitPlan(entry, config(base, experts, method, "density" in method_impl.parameters), False,
                            f"not exact: {reason}; {artifact} is the artifact")

    if not method_impl.linear:
        return native(f"{merge.method} is not linear in the coefficients (each merge transforms Σ cᵢ τᵢ′), "
                      f"so no task_arithmetic config computes it")

    if out_dtype is None:
        return native(f"the base mixes float dtypes ({', '.join(sorted(dtypes))}) and mergekit writes one out_dtype")
    base_ok = _readable_as_is(base, hf)
    direct = (merge.method == "task_arithmetic" and "lines" not in params and not prefix and base_ok
              and all(_readable_as_is(p, hf) for p in experts) and _buffers_agree(base, experts))
    if direct:
        return MergekitPlan(entry, config(base, experts, "task_arithmetic", False), True,
                            "exact: task_arithmetic with normalize: false computes θ₀ + Σ weightᵢ (θᵢ − θ₀), "
                            "in float32, written as the base's dtype")
    if out_dir is None:
        why = ("mergekit cannot use these checkpoints as they are" if merge.method == "task_arithmetic" and "lines" not in params
               else f"mergekit's {method_impl.mergekit} is not merge-explorer's {merge.method}" if method_impl.mergekit
               else f"mergekit has no {merge.method}")
        return native(f"{why} and the exact inputs (preprocessed experts) were not written; "
                      f"`merge-explorer export` without --no-checkpoint writes them and an exact config")
    engine = experiment.engine
    inputs_dir = Path(out_dir).resolve() / INPUTS_DIR
    inputs = {}
    if not (hf or base_ok):  # e.g. an open_clip .pt with a `state_dict` entry or a `module.` prefix
        inputs["base"] = write_base_copy(engine, inputs_dir)
    experts_in = write_preprocessed_experts(engine, experiment.tasks, inputs_dir, base if hf else None,
                                            _base_dtype_may_be_exact(merge))
    inputs.update(experts_in)
    base_ref = inputs["base"]["path"] if "base" in inputs else base
    where = f" under {prefix!r} (the base's tensors elsewhere)" if prefix else ""
    how = (f"exact: the models are merge-explorer's preprocessed experts θ₀ + τᵢ′ after {describe_merge(params)}"
           f"{where}, {_describe_input_dtype(experts_in, out_dtype)}, content-hashed in {INPUTS_DIR}/; "
           f"task_arithmetic with normalize: false and weight = MAP coefficient computes θ₀ + Σ cᵢ τᵢ′, "
           f"merge-explorer's merge")
    return MergekitPlan(entry, config(base_ref, [inputs[t]["path"] for t in experiment.tasks], "task_arithmetic", False),
                        True, how, inputs)


def write_mergekit_yaml(path: Path, plan: MergekitPlan) -> None:
    header = (f"# mergekit config written by merge-explorer {__version__}\n"
              f"# run: {plan.entry_point} {path.name} OUTPUT_DIR\n"
              f"# {plan.how}\n")
    path.write_text(header + yaml.safe_dump(plan.config, sort_keys=False), encoding="utf-8")


def write_merged(experiment, coefficients, out_dir: Path, plan: MergekitPlan | None = None) -> dict[str, Path]:
    """The merged model at `coefficients` into `out_dir`, as the family writes it (merged.safetensors, or a
    Hugging Face folder merged/), rounded the way the exported mergekit config computes it. The one
    route to a merged checkpoint: `merge-explorer export` and the app both come here."""
    c = np.asarray(coefficients, dtype=float)
    plan = plan or plan_mergekit(experiment, c)
    return lookup_family(experiment.spec.model.family).write_merged(experiment, c, Path(out_dir), plan.reads_inputs)


def export(experiment, result, decision: Decision, out_dir: str | Path, weights=None, minimums=None,
           checkpoint: bool = True, measured=None, test_split=None, polish: dict | None = None) -> dict[str, Path]:
    """Write the export files into `out_dir`; returns their paths.

    `measured` (T,) and `test_split` ({task: value or None}, {task: note}) are what the caller measured
    (or read from the store) through the experiment: see `Experiment.stored_metrics` and
    `Experiment.held_out`. With `checkpoint`, also the merged model and, where the exact mergekit
    route needs them, the preprocessed experts under mergekit-inputs/ (not returned: they are
    folders or large files).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"coefficients": out / "coefficients.json", "mergekit": out / "mergekit.yaml"}
    plan = plan_mergekit(experiment, decision.coefficients, out if checkpoint else None)
    doc = coefficients_document(experiment, result, decision, weights, minimums, plan, measured, test_split, polish)
    paths["coefficients"].write_text(json.dumps(doc, indent=2) + "\n")
    write_mergekit_yaml(paths["mergekit"], plan)
    if checkpoint:
        paths.update(write_merged(experiment, decision.coefficients, out, plan))
    return paths
