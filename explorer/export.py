"""Exporting a chosen merge: coefficients.json, mergekit.yaml and merged.safetensors.

The JSON makes a choice reproducible (content hashes of every checkpoint, method, parameters,
package version); the mergekit YAML rebuilds it with mergekit; the safetensors file is the merged
checkpoint itself, with the base's key names and dtypes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from . import __version__
from .decision import Decision
from .spec import resolve

MERGEKIT_METHOD = {"task_arithmetic": "task_arithmetic", "ties": "ties", "dare": "dare_linear"}
MERGEKIT_NOTE = {
    "task_arithmetic": "exact: mergekit computes θ₀ + Σ weightᵢ (θᵢ − θ₀) with normalize: false",
    "ties": "merge-explorer trims per tensor to `density`, elects the sign from the unweighted sum of trimmed "
            "vectors and applies the coefficients to the sign-filtered vectors; mergekit's ties elects the sign "
            "from the weighted vectors, so results can differ slightly",
    "dare": "merge-explorer drops entries with probability 1 − density and rescales by 1/density with its own "
            "seeded masks; mergekit's dare_linear draws different random masks, so results differ by the mask",
}


def coefficients_document(experiment, result, decision: Decision, weights=None, minimums=None) -> dict:
    """Everything needed to reproduce and audit the choice."""
    spec, tasks = experiment.spec, experiment.tasks
    return {
        "experiment": spec.name,
        "experiment_key": experiment.key,
        "tasks": tasks,
        "coefficients": {t: float(c) for t, c in zip(tasks, decision.coefficients)},
        "predicted": {t: float(v) for t, v in zip(tasks, decision.predicted)},
        "metrics": {t: spec.tasks[t].metric for t in tasks},
        "higher_is_better": {t: bool(s > 0) for t, s in zip(tasks, experiment.senses)},
        "surrogate_r2_cv": {t: float(result.surrogates[t].r2_cv_) for t in tasks},
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


def mergekit_config(experiment, coefficients: np.ndarray) -> dict:
    """A mergekit config reproducing the merge (weights = MAP coefficients, no normalisation)."""
    spec = experiment.spec
    method = spec.merge.method
    models = []
    for task, c in zip(experiment.tasks, coefficients):
        params = {"weight": float(c)}
        if method != "task_arithmetic":
            params["density"] = float(spec.merge.density)
        models.append({"model": str(resolve(experiment.spec_dir, spec.tasks[task].checkpoint)), "parameters": params})
    return {
        "merge_method": MERGEKIT_METHOD[method],
        "base_model": str(resolve(experiment.spec_dir, spec.model.base)),
        "models": models,
        "parameters": {"normalize": False},
        "dtype": "float32",
    }


def write_mergekit_yaml(path: Path, experiment, coefficients: np.ndarray) -> None:
    note = MERGEKIT_NOTE[experiment.spec.merge.method]
    header = f"# mergekit config written by merge-explorer {__version__}\n# semantics: {note}\n"
    if experiment.spec.model.merge_prefix:
        header += f"# merge-explorer merged only tensors under {experiment.spec.model.merge_prefix!r}; mergekit merges all\n"
    path.write_text(header + yaml.safe_dump(mergekit_config(experiment, coefficients), sort_keys=False))


def write_merged_checkpoint(path: Path, experiment, coefficients: np.ndarray) -> None:
    """merged.safetensors with the base's keys and dtypes; loadable wherever the base is."""
    from safetensors.torch import save_file

    state = experiment.engine.merged_state_dict(coefficients)
    state = {k: v.clone().contiguous() for k, v in state.items()}  # no shared storage (tied weights)
    save_file(state, str(path), metadata={"format": "pt", "merge-explorer": __version__,
                                          "coefficients": json.dumps([float(c) for c in coefficients])})


def export(experiment, result, decision: Decision, out_dir: str | Path, weights=None, minimums=None,
           checkpoint: bool = True) -> dict[str, Path]:
    """Write the three export files into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"coefficients": out / "coefficients.json", "mergekit": out / "mergekit.yaml"}
    doc = coefficients_document(experiment, result, decision, weights, minimums)
    paths["coefficients"].write_text(json.dumps(doc, indent=2) + "\n")
    write_mergekit_yaml(paths["mergekit"], experiment, decision.coefficients)
    from .families import lookup as lookup_family

    family = lookup_family(experiment.spec.model.family)  # e.g. hf_causal_lm exports a model folder
    if checkpoint and family is not None:
        paths.update(family.export(experiment, decision.coefficients, out))
    elif checkpoint:
        paths["merged"] = out / "merged.safetensors"
        write_merged_checkpoint(paths["merged"], experiment, decision.coefficients)
    return paths
