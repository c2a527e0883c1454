"""LoRA experts for the offline language-model demo: one peft adapter per skill over the demo's base.

The LLM demo (llm_zoo.py) fine-tunes full copies of its tiny Llama; here the same skills are
learnt by LoRA adapters instead (peft's `LoraConfig` + `get_peft_model`, the same answer-only loss,
sampler and held-out prompts, seeded), saved with peft's own `save_pretrained` under
`<zoo>/lora/<skill>/` (adapter_config.json + adapter_model.safetensors). The spec
examples/demo_llm_lora.yaml explores them with `model.experts_format: peft`.

Built after, and on top of, the LLM demo's base, with a manifest of its own (`lora/manifest.json`,
keyed by this configuration and the base's weights), so the full-expert demo is untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from explorer.demo.llm_zoo import DEFAULT_DIR, MANIFEST, LLMZooConfig, _sha256, _version, finetune, measure
from explorer.errors import ExplorerError
from explorer.merging.checkpoints import content_hash
from explorer.merging.lora import LoraAdapter

LORA_DIR = "lora"
BUILD_VERSION = "1"


@dataclass(frozen=True)
class LoraZooConfig:
    """Everything that determines the adapters' weights besides the base (hashed into the manifest)."""

    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    steps: int = 120
    batch: int = 64
    lr: float = 1e-3
    seed: int = 0

    def hash(self, base_digest: str) -> str:
        text = json.dumps({**asdict(self), "base": base_digest, "build_version": BUILD_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _zoo(zoo_dir: Path) -> tuple[dict, LLMZooConfig]:
    """The LLM demo's manifest and the configuration it was built with."""
    manifest = json.loads((zoo_dir / MANIFEST).read_text())
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["config"].items()}
    return manifest, LLMZooConfig(**cfg)


def _reserved(zoo_dir: Path, skills) -> set[str]:
    """Every held-out prompt of the demo (validation and test): training never draws them."""
    out = set()
    for skill in skills:
        for split in ("validation", "test"):
            for line in (zoo_dir / f"{skill}.{split}.jsonl").read_text().splitlines():
                out.add(json.loads(line)["prompt"])
    return out


def build_lora_experts(zoo_dir: str | os.PathLike = DEFAULT_DIR, config: LoraZooConfig | None = None,
                       progress: bool = True) -> Path:
    """Train and save one adapter per skill of the demo in `zoo_dir` (its base and prompts must exist)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ExplorerError("the LoRA demo trains its adapters with peft, which is not installed: "
                            "pip install 'merge-explorer[lora]'") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config or LoraZooConfig()
    zoo_dir = Path(zoo_dir)
    _, zoo_config = _zoo(zoo_dir)
    skills = zoo_config.skills
    out = zoo_dir / LORA_DIR
    out.mkdir(parents=True, exist_ok=True)
    train_config = replace(zoo_config, finetune_steps=config.steps, finetune_batch=config.batch,
                           finetune_lr=config.lr, seed=config.seed)
    reserved = _reserved(zoo_dir, skills)
    base_dir = zoo_dir / "base"
    tok = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster (and deterministic)
    started = time.perf_counter()
    try:
        for skill in skills:
            model = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True, dtype=torch.float32)
            lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.target_modules),
                              lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
            torch.manual_seed(config.seed * 1000 + 1 + skills.index(skill))  # lora_A's initialisation
            peft_model = get_peft_model(model, lora)
            finetune(peft_model, tok, skill, train_config, reserved, progress)
            peft_model.save_pretrained(str(out / skill))
        train_s = time.perf_counter() - started
        t = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True, dtype=torch.float32).eval()
        base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        experts = {}
        for skill in skills:  # densified once, for the report only (the explorer merges the factors)
            adapter = LoraAdapter(out / skill)
            experts[skill] = {k: (v + adapter.factors[k].delta() if k in adapter.factors else v) for k, v in base.items()}
        report = measure(model, base, experts, {s: zoo_dir / f"{s}.test.jsonl" for s in skills}, zoo_config, progress)
        evaluate_s = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)
    listed = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "kind": "llm-lora", "config_hash": config.hash(content_hash(base_dir)),
        "config": asdict(config), "base": "../base", "skills": list(skills),
        "adapter_parameters": int(sum(f.a.numel() + f.b.numel() for f in LoraAdapter(out / skills[0]).factors.values())),
        "files": {f: _sha256(out / f) for f in listed},
        "timings": {"train_s": round(train_s, 2), "evaluate_s": round(evaluate_s, 2),
                    "total_s": round(time.perf_counter() - started, 2)},
        "versions": {"torch": torch.__version__, "peft": _version("peft"), "transformers": _version("transformers")},
        **report,
    }
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def ensure_lora_experts(zoo_dir: str | os.PathLike = DEFAULT_DIR, config: LoraZooConfig | None = None,
                        progress: bool = True) -> Path:
    """The LoRA experts' manifest under `zoo_dir`/lora, trained first unless current for this base."""
    config = config or LoraZooConfig()
    zoo_dir = Path(zoo_dir)
    manifest = zoo_dir / LORA_DIR / MANIFEST
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text())
            base_digest = content_hash(zoo_dir / "base")
        except (OSError, ValueError, ExplorerError):
            found, base_digest = {}, None
        files = [zoo_dir / LORA_DIR / f for f in found.get("files", {})]
        if base_digest and found.get("config_hash") == config.hash(base_digest) and files and all(f.is_file() for f in files):
            return manifest
    return build_lora_experts(zoo_dir, config, progress)
