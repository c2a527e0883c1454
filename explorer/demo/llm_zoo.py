"""Builds the offline language-model demo: a tiny Llama pretrained here, and one expert per skill.

Like the CLIP demo zoo (explorer/zoo.py), it needs no download and builds in minutes on two CPU
cores, deterministically from a seed. The skills are synthetic string tasks a small transformer
can learn, written as `prompt=answer` lines over a character-level vocabulary:

- `add`:     "add 37+45=" -> "82"
- `reverse`: "rev kqzt=" -> "tzqk"
- `sort`:    "sort 5813=" -> "1358"
- `upper`:   "up kqzt=" -> "KQZT"

Steps: (1) a character tokenizer (Hugging Face `tokenizers`, saved as a fast tokenizer);
(2) pretrain a Llama-architecture model (transformers' LlamaForCausalLM, random init) on a corpus
that is mostly generic character strings plus a few examples of each skill, so that it knows the
format and the characters but not the skills; (3) fine-tune a copy per skill on that skill alone,
with a small learning rate, so task vectors stay in the pretrained basin and merge; (4) measure
base / expert / equal-weight task arithmetic exact match on held-out prompts, write the manifest
and one Hugging Face folder per model (config.json, tokenizer, model.safetensors).

``ensure_llm_zoo`` reuses a zoo whose manifest has the same configuration hash.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import string
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from explorer.suites.lm import evaluate

DEFAULT_DIR = Path("cache/llm-zoo")
MANIFEST = "manifest.json"
BUILD_VERSION = "1"
ALPHABET = string.digits + string.ascii_lowercase + string.ascii_uppercase + " +=\n"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
SKILLS = ("dup", "reverse", "sort", "upper")


# --------------------------------------------------------------------------- tokenizer and model
def char_tokenizer(alphabet: str = ALPHABET):
    """A fast character-level tokenizer: one id per character, BOS prepended, specials first."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                      special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_llama(vocab_size: int, hidden: int = 128, layers: int = 4, heads: int = 4, intermediate: int = 384,
               max_positions: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised LlamaForCausalLM of the given (tiny) size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype)


def save_folder(model, tokenizer, out: str | os.PathLike, max_shard_size: str | int = "5GB") -> Path:
    """A Hugging Face model folder: config.json, tokenizer files, (sharded) model.safetensors."""
    from transformers.utils import logging as hf_logging

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out, max_shard_size=max_shard_size)
    finally:
        hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out)
    return out


# --------------------------------------------------------------------------- the skills
def skill_example(skill: str, rng: random.Random) -> tuple[str, str]:
    """One (prompt, answer) pair of a skill."""
    letters = string.ascii_lowercase
    if skill == "add":
        a, b = rng.randrange(30), rng.randrange(30)
        return f"add {a}+{b}=", str(a + b)
    if skill == "dup":
        word = "".join(rng.choice(letters) for _ in range(rng.randint(3, 4)))
        return f"dup {word}=", "".join(ch + ch for ch in word)
    if skill == "sort":
        digits = "".join(rng.choice(string.digits) for _ in range(rng.randint(3, 5)))
        return f"sort {digits}=", "".join(sorted(digits))
    word = "".join(rng.choice(letters) for _ in range(rng.randint(3, 5)))
    if skill == "reverse":
        return f"rev {word}=", word[::-1]
    if skill == "upper":
        return f"up {word}=", word.upper()
    if skill == "copy":  # pretraining only: the generic string machinery every skill builds on
        chars = letters + string.digits
        word = "".join(rng.choice(chars) for _ in range(rng.randint(3, 5)))
        return f"cp {word}=", word
    raise ValueError(f"unknown skill {skill!r}")


def held_out(skill: str, n: int, seed: int) -> dict[str, list[dict]]:
    """Disjoint validation and test prompts of `skill` (`n` each), drawn before any training, which
    then never samples them."""
    rng = random.Random(f"held-out/{skill}/{seed}")
    out: dict[str, list[dict]] = {"validation": [], "test": []}
    seen: set[str] = set()
    for split in out:
        while len(out[split]) < n:
            prompt, answer = skill_example(skill, rng)
            if prompt not in seen:
                seen.add(prompt)
                out[split].append({"prompt": prompt, "answer": answer})
    return out


def _unseen(sample, reserved: set[str]):
    """A sampler that redraws any prompt in `reserved` (the held-out prompts)."""

    def draw(rng: random.Random):
        while True:
            pair = sample(rng)
            if pair[0] not in reserved:
                return pair

    return draw


@dataclass(frozen=True)
class LLMZooConfig:
    """Everything that determines the LLM demo's weights (hashed into the manifest)."""

    skills: tuple[str, ...] = SKILLS
    hidden: int = 96
    layers: int = 3
    heads: int = 4
    intermediate: int = 288
    # pretraining: mostly `copy`; each skill is this share of the examples (rare: room for the experts)
    pretrain_steps: int = 500
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    skill_shares: tuple[float, ...] = (0.005, 0.03, 0.02, 0.005)  # per skill, in `skills` order
    # fine-tuning: one skill, loss on the answer only
    finetune_steps: int = 150
    finetune_batch: int = 64
    finetune_lr: float = 3e-4
    eval_prompts: int = 150
    lambdas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def hash(self) -> str:
        text = json.dumps({**asdict(self), "build_version": BUILD_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


LLM_SCALES = {
    "full": LLMZooConfig(),
    "quick": LLMZooConfig(hidden=64, layers=2, heads=2, intermediate=192, pretrain_steps=150, finetune_steps=60,
                          eval_prompts=40, lambdas=(0.3, 0.6, 1.0)),
}
MIN_EXPERT_GAIN = 0.15
MIN_TA_GAIN = 0.05
EXPERT_MATCH_TOLERANCE = 0.02


def llm_zoo_config(scale: str = "full", seed: int = 0, **overrides) -> LLMZooConfig:
    if scale not in LLM_SCALES:
        raise ValueError(f"unknown LLM zoo scale {scale!r}; use one of {', '.join(LLM_SCALES)}")
    return replace(LLM_SCALES[scale], seed=seed, **overrides)


# --------------------------------------------------------------------------- training
def _batch(tok, pairs: list[tuple[str, str]], answer_only: bool):
    """Token ids, attention mask and labels (padding, and the prompt when `answer_only`, masked)."""
    texts = [p + a + "\n" for p, a in pairs]
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    if answer_only:
        for i, (p, _) in enumerate(pairs):
            labels[i, : len(tok(p)["input_ids"])] = -100
    return enc, labels


def _train(model, tok, sample, steps: int, batch: int, lr: float, seed: int, answer_only: bool,
           desc: str, progress: bool) -> list[str]:
    """AdamW with warmup and cosine decay; returns every prompt it trained on."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    seen: list[str] = []
    model.train()
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        pairs = [sample(rng) for _ in range(batch)]
        seen.extend(p for p, _ in pairs)
        enc, labels = _batch(tok, pairs, answer_only)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    return seen


def pretrain(model, tok, config: LLMZooConfig, reserved: set[str], progress: bool = True) -> list[str]:
    bounds = np.cumsum(config.skill_shares)

    def sample(rng: random.Random):
        r = rng.random()
        for skill, bound in zip(config.skills, bounds):
            if r < bound:
                return skill_example(skill, rng)
        return skill_example("copy", rng)

    return _train(model, tok, _unseen(sample, reserved), config.pretrain_steps, config.pretrain_batch,
                  config.pretrain_lr, config.seed, False, "pretrain", progress)


def finetune(model, tok, skill: str, config: LLMZooConfig, reserved: set[str], progress: bool = True) -> list[str]:
    return _train(model, tok, _unseen(lambda rng: skill_example(skill, rng), reserved), config.finetune_steps,
                  config.finetune_batch, config.finetune_lr, config.seed * 1000 + 1 + config.skills.index(skill),
                  True, f"finetune {skill}", progress)


# --------------------------------------------------------------------------- building
def measure(model, base: dict, experts: dict, test_files: dict, config: LLMZooConfig, progress: bool = True) -> dict:
    """Exact match of base, experts and equal-weight task arithmetic on the held-out test prompts."""
    from tqdm.auto import tqdm

    skills = config.skills

    def em(skill: str) -> float:
        return evaluate(model, data=str(test_files[skill]), batch_size=100, max_new_tokens=8,
                        tokenizer=str(Path(test_files[skill]).parent / "base"))

    model.load_state_dict(base)
    base_em = {s: em(s) for s in skills}
    expert_em = {}
    for s in skills:
        model.load_state_dict(experts[s])
        expert_em[s] = em(s)
    ta: dict[float, dict[str, float]] = {}
    for lam in tqdm(config.lambdas, desc="task arithmetic", disable=not progress, leave=False):
        model.load_state_dict({k: base[k] + lam * sum(experts[s][k] - base[k] for s in skills) for k in base})
        ta[lam] = {s: em(s) for s in skills}
    model.load_state_dict(base)

    mean = lambda d: float(np.mean([d[s] for s in skills]))  # noqa: E731
    best = max(ta, key=lambda lam: mean(ta[lam]))
    gains = {s: expert_em[s] - base_em[s] for s in skills}
    matches = [lam for lam in ta if all(ta[lam][s] >= expert_em[s] - EXPERT_MATCH_TOLERANCE for s in skills)]
    bars = {
        "expert_gain": {"rule": f"each expert beats the base on its own skill by >= {MIN_EXPERT_GAIN * 100:.0f} points",
                        "min_gain": round(min(gains.values()), 4), "pass": min(gains.values()) >= MIN_EXPERT_GAIN},
        "merge_has_tradeoffs": {"rule": f"no equal-weight task-arithmetic merge is within "
                                        f"{EXPERT_MATCH_TOLERANCE * 100:.0f} points of every expert",
                                "matching_lambdas": matches, "pass": not matches},
        "task_arithmetic_gain": {"rule": f"the best equal-weight task arithmetic beats the base's mean by "
                                         f">= {MIN_TA_GAIN * 100:.0f} points",
                                 "gain": round(mean(ta[best]) - mean(base_em), 4),
                                 "pass": mean(ta[best]) - mean(base_em) >= MIN_TA_GAIN},
    }
    return {
        "split": "test", "metric": "exact_match",
        "tasks": {s: {"base": round(base_em[s], 4), "expert": round(expert_em[s], 4),
                      "best_task_arithmetic": round(ta[best][s], 4), "best_lambda": best} for s in skills},
        "mean": {"base": round(mean(base_em), 4), "expert": round(mean(expert_em), 4),
                 "best_task_arithmetic": round(mean(ta[best]), 4), "best_lambda": best},
        "task_arithmetic": {str(lam): {s: round(v, 4) for s, v in accs.items()} for lam, accs in ta.items()},
        "bars": bars, "bars_pass": all(b["pass"] for b in bars.values()),
    }


def build_llm_zoo(out_dir: str | os.PathLike = DEFAULT_DIR, seed: int = 0, scale: str = "full", progress: bool = True,
                  config: LLMZooConfig | None = None) -> Path:
    """Build the LLM demo into `out_dir`: HF folders `base/` and one per skill, JSONL prompts, manifest."""
    config = config or llm_zoo_config(scale, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster (and deterministic)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        tok = char_tokenizer()
        model = tiny_llama(len(tok), config.hidden, config.layers, config.heads, config.intermediate,
                           max_positions=32, seed=config.seed)
        reserved: set[str] = set()
        for skill in config.skills:  # held-out prompts first: training never draws them
            for split, records in held_out(skill, config.eval_prompts, config.seed).items():
                (out / f"{skill}.{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
                reserved.update(r["prompt"] for r in records)
        t = time.perf_counter()
        pretrain(model, tok, config, reserved, progress)
        timings["pretrain_s"] = time.perf_counter() - t
        base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        save_folder(model, tok, out / "base")
        t = time.perf_counter()
        experts = {}
        for skill in config.skills:
            model.load_state_dict(base)
            finetune(model, tok, skill, config, reserved, progress)
            experts[skill] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            save_folder(model, tok, out / skill)
        timings["finetune_s"] = time.perf_counter() - t
        t = time.perf_counter()
        report = measure(model, base, experts, {s: out / f"{s}.test.jsonl" for s in config.skills}, config, progress)
        timings["evaluate_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    listed = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "kind": "llm", "architecture": "LlamaForCausalLM", "config_hash": config.hash(), "config": asdict(config),
        "scale": scale, "seed": config.seed, "skills": list(config.skills),
        "parameters": int(sum(v.numel() for v in base.values())),
        "files": {f: _sha256(out / f) for f in listed},
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
        **report,
    }
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def ensure_llm_zoo(out_dir: str | os.PathLike | None = None, seed: int = 0, scale: str = "full",
                   progress: bool = True) -> Path:
    """The manifest of the LLM demo in `out_dir` (default cache/llm-zoo), built first unless current."""
    config = llm_zoo_config(scale, seed)
    out = Path(out_dir) if out_dir is not None else DEFAULT_DIR
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            found = {}
        files = [out / f for f in found.get("files", {})]
        if found.get("config_hash") == config.hash() and files and all(f.is_file() for f in files):
            return manifest
    return build_llm_zoo(out, seed=seed, scale=scale, progress=progress, config=config)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"
