"""Builds the offline demo zoo: a tiny open_clip model, pretrained here, and one expert per task.

The demo needs checkpoints that behave like the real CLIP ViT-B/32 setting (a shared pretrained
model, image-encoder-only experts fine-tuned against frozen zero-shot heads, task vectors that
merge with trade-offs), yet builds in minutes on two CPU cores with no download. Steps:

1. register a small open_clip config (``merge-explorer-tiny``: a ViT on 28x28 inputs) from a JSON
   file written into the zoo directory;
2. pretrain it contrastively (CLIP loss) on image-caption pairs from the built-in datasets, with
   a few "rare" classes per task that pretraining sees only a handful of times (this is what leaves
   room for the experts);
3. fine-tune only the image encoder per task against that task's frozen zero-shot head, with a
   small learning rate so task vectors stay in the pretrained basin and merge;
4. measure base / expert / task-arithmetic accuracies on the test splits and record quality bars.

Two zoos: the 4-task default (``cache/demo-zoo/``) and an 8-task one (``cache/demo-zoo-8/``, the
4 tasks plus inverted Fashion-MNIST, font-rendered digits, procedural shapes and textures), the
demo's counterpart of CLIP ViT-B/32 on 8 tasks. ``ensure_zoo`` reuses a zoo whose manifest has
the same configuration hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from explorer.suites import clip as clip_suite
from explorer.suites import datasets as builtin

ARCHITECTURE = "merge-explorer-tiny"
MERGE_PREFIX = "visual."
DEFAULT_DIR = Path("cache/demo-zoo")
#: Where each zoo size lives by default (``merge-explorer demo --tasks N``).
DEFAULT_DIRS = {4: DEFAULT_DIR, 8: Path("cache/demo-zoo-8")}
MANIFEST = "manifest.json"
#: Bump when the build procedure changes in a way the configuration does not capture.
BUILD_VERSION = "1"
#: Data splits are always drawn with this seed, so the zoo seed never moves test images into training.
SPLIT_SEED = 0


@dataclass(frozen=True)
class ZooConfig:
    """Everything that determines the zoo's weights (hashed into the manifest)."""

    tasks: tuple[str, ...] = ("fashion_mnist", "digits", "rotated_digits", "font_letters")
    # model
    embed_dim: int = 64
    vision_width: int = 128
    vision_layers: int = 4
    vision_head_width: int = 32
    patch_size: int = 7
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    context_length: int = 16
    # pretraining
    rare_classes: int = 6          # per task, classes pretraining sees rarely
    rare_keep: float = 0.01        # fraction of a rare class's training images used in pretraining
    pretrain_steps: int = 600
    pretrain_batch: int = 256
    pretrain_lr: float = 2e-3
    pretrain_weight_decay: float = 0.05
    # fine-tuning (image encoder only)
    finetune_steps: int = 100
    finetune_batch: int = 128
    finetune_lr: float = 3e-4
    # evaluation
    eval_subsample: int | None = None
    lambdas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    warmup_fraction: float = 0.05
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def hash(self) -> str:
        blob = json.dumps({"config": asdict(self), "build": BUILD_VERSION}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


SCALES = {
    "full": ZooConfig(),
    "quick": ZooConfig(
        pretrain_steps=250, pretrain_batch=128, finetune_steps=60, finetune_batch=96, finetune_lr=5e-4, eval_subsample=300, lambdas=(0.2, 0.4, 0.6, 0.8, 1.0),
    ),
}

TASKS_8 = ZooConfig().tasks + ("inverted_fashion", "font_digits", "shapes", "textures")
#: The 8-task zoo: the 4-task recipe's losses on eight tasks sharing each pretraining batch. Three
#: changes make eight task vectors add up (measured: with the 4-task model and recipe the best
#: equal-weight merge gained 1 point over the base): a coarser, wider ViT (patch 14, width 192,
#: 3 layers, ~3x cheaper per image), rare classes kept at 3 % in pretraining (at 1 % eight summed
#: vectors mostly collide), and shorter pretraining with smaller fine-tuning batches (a base that
#: stays mediocre, about 3 min in all). The lambda grid is finer where eight vectors peak. It trains on
#: one thread (``extra["threads"]``): on a shared 2-core machine two threads wait on each other at
#: every matmul and run several times slower.
_RECIPE_8 = dict(tasks=TASKS_8, patch_size=14, vision_width=192, vision_layers=3, rare_keep=0.03)
SCALES_8 = {
    "full": replace(SCALES["full"], **_RECIPE_8, pretrain_steps=500, finetune_steps=80, finetune_batch=96,
                    finetune_lr=4e-4, lambdas=(0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 1.0), extra={"threads": 1}),
    "quick": replace(SCALES["quick"], **_RECIPE_8, extra={"threads": 1}),
}
ZOO_SIZES = {4: SCALES, 8: SCALES_8}

#: Quality bars (accuracy points are fractions: 0.15 = 15 points).
MIN_EXPERT_GAIN = 0.15
MIN_TA_GAIN = 0.05
EXPERT_MATCH_TOLERANCE = 0.02


# --------------------------------------------------------------------------- public API


def zoo_config(scale: str = "full", seed: int = 0, n_tasks: int = 4, **overrides) -> ZooConfig:
    """The configuration for a named scale (``full`` or ``quick``) of the 4- or 8-task zoo, with a seed and overrides."""
    if n_tasks not in ZOO_SIZES:
        raise ValueError(f"no demo zoo with {n_tasks} tasks; use one of {', '.join(map(str, ZOO_SIZES))}")
    scales = ZOO_SIZES[n_tasks]
    if scale not in scales:
        raise ValueError(f"unknown zoo scale {scale!r}; use one of {', '.join(scales)}")
    return replace(scales[scale], seed=seed, **overrides)


def ensure_zoo(
    out_dir: str | os.PathLike | None = None, seed: int = 0, scale: str = "full", progress: bool = True,
    config: ZooConfig | None = None, n_tasks: int = 4,
) -> Path:
    """Path of the zoo's manifest, building the zoo first unless one with the same config exists.

    ``out_dir`` defaults to ``DEFAULT_DIRS[n_tasks]`` (``cache/demo-zoo`` for 4 tasks).
    """
    config = config or zoo_config(scale, seed, n_tasks)
    out_dir = DEFAULT_DIRS[n_tasks] if out_dir is None else out_dir
    manifest = Path(out_dir) / MANIFEST
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            found = {}
        files = [Path(out_dir) / f for f in found.get("files", {})]
        if found.get("config_hash") == config.hash() and files and all(f.is_file() for f in files):
            register(out_dir)
            return manifest
    return build_zoo(out_dir, seed=seed, scale=scale, progress=progress, config=config)


def build_zoo(
    out_dir: str | os.PathLike = DEFAULT_DIR, seed: int = 0, scale: str = "full", progress: bool = True,
    config: ZooConfig | None = None, n_tasks: int = 4,
) -> Path:
    """Build the zoo into ``out_dir`` (config JSON, base and expert safetensors, manifest); return the manifest path."""
    from safetensors.torch import save_file

    config = config or zoo_config(scale, seed, n_tasks)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    threads = torch.get_num_threads()
    if config.extra.get("threads"):
        torch.set_num_threads(int(config.extra["threads"]))
    try:
        write_config(out, config)
        model = create(config, out)
        rare = rare_classes(config)

        t = time.perf_counter()
        pretrain(model, config, rare, progress=progress)
        timings["pretrain_s"] = time.perf_counter() - t
        base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        save_file(_contiguous(base), str(out / "base.safetensors"))

        t = time.perf_counter()
        experts = {}
        for task in config.tasks:
            model.load_state_dict(base)
            finetune(model, task, config, progress=progress)
            experts[task] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            save_file(_contiguous(experts[task]), str(out / f"{task}.safetensors"))
        timings["finetune_s"] = time.perf_counter() - t

        t = time.perf_counter()
        report = measure(model, base, experts, config, progress=progress)
        timings["evaluate_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)

    files = [f"{ARCHITECTURE}.json", "base.safetensors"] + [f"{t}.safetensors" for t in config.tasks]
    manifest = {
        "architecture": ARCHITECTURE,
        "config_hash": config.hash(),
        "config": asdict(config),
        "scale": scale,
        "seed": config.seed,
        "split_seed": SPLIT_SEED,
        "merge_prefix": MERGE_PREFIX,
        "rare_classes": {t: [builtin.load(t, "test").classnames[c] for c in rare[t]] for t in config.tasks},
        "files": {f: _sha256(out / f) for f in files},
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "versions": {"torch": torch.__version__, "open_clip": _open_clip_version()},
        **report,
    }
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def register(out_dir: str | os.PathLike) -> None:
    """Make ``merge-explorer-tiny`` known to open_clip from the zoo directory's config JSON."""
    import open_clip

    cfg = Path(out_dir) / f"{ARCHITECTURE}.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"zoo directory {out_dir} has no {cfg.name}; build it with explorer.demo.zoo.build_zoo")
    open_clip.add_model_config(cfg)


def load_model(out_dir: str | os.PathLike, name: str = "base") -> torch.nn.Module:
    """A zoo checkpoint (``base`` or a task name) as an open_clip model in eval mode."""
    import open_clip

    register(out_dir)
    path = Path(out_dir) / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"zoo checkpoint {path} not found")
    return open_clip.create_model(ARCHITECTURE, pretrained=str(path)).eval()


# --------------------------------------------------------------------------- steps


def model_config(config: ZooConfig) -> dict:
    """The open_clip model config JSON for ``merge-explorer-tiny``."""
    return {
        "embed_dim": config.embed_dim,
        "vision_cfg": {
            "image_size": builtin.IMAGE_SIZE,
            "layers": config.vision_layers,
            "width": config.vision_width,
            "head_width": config.vision_head_width,
            "patch_size": config.patch_size,
        },
        "text_cfg": {
            "context_length": config.context_length,
            "vocab_size": 49408,
            "width": config.text_width,
            "heads": config.text_heads,
            "layers": config.text_layers,
        },
    }


def write_config(out: Path, config: ZooConfig) -> Path:
    """Write the model config JSON where a spec's ``model.config_dir`` can point."""
    path = out / f"{ARCHITECTURE}.json"
    path.write_text(json.dumps(model_config(config), indent=2) + "\n")
    return path


def create(config: ZooConfig, out: Path) -> torch.nn.Module:
    """A seeded random-init ``merge-explorer-tiny`` (registered from ``out``)."""
    import open_clip

    register(out)
    torch.manual_seed(config.seed)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "no pretrained weights" is the point here
    try:
        return open_clip.create_model(ARCHITECTURE)
    finally:
        logging.getLogger().setLevel(level)


def rare_classes(config: ZooConfig) -> dict[str, list[int]]:
    """Per task, the classes pretraining sees only rarely (seeded)."""
    rng = np.random.default_rng([config.seed, 101])
    out = {}
    for task in config.tasks:
        n = len(builtin.load(task, "test", seed=SPLIT_SEED, subsample=1).classnames)
        out[task] = sorted(int(c) for c in rng.choice(n, size=min(config.rare_classes, n), replace=False))
    return out


def pretrain(model: torch.nn.Module, config: ZooConfig, rare: dict[str, list[int]], progress: bool = True) -> None:
    """CLIP loss on (image, caption) pairs, captions = a random template of the class name.

    Each step samples the same number of images per task; within a step each class gets one
    caption, so the text side holds no duplicate positives (with ~40 classes in all, duplicates
    would otherwise dominate the batch).
    """
    from tqdm.auto import tqdm

    cfg = clip_suite.preprocess_cfg(model)
    rng = np.random.default_rng([config.seed, 202])
    pools = []
    for task in config.tasks:
        data = builtin.load(task, "train", seed=SPLIT_SEED)
        keep = np.ones(len(data.labels), dtype=bool)
        for c in rare[task]:
            idx = np.flatnonzero(data.labels == c)
            drop = rng.permutation(idx)[max(1, int(round(config.rare_keep * len(idx)))):]
            keep[drop] = False
        pools.append((task, clip_suite.arrays_to_tensor(data.images[keep], cfg), torch.as_tensor(data.labels[keep]),
                      data.classnames, data.templates))
    tokenize = clip_suite._tokenizer(model)
    captions = [[[tpl.format(c) for tpl in templates] for c in classnames] for _, _, _, classnames, templates in pools]
    tokens = [[tokenize(caps) for caps in task_caps] for task_caps in captions]
    offsets = np.cumsum([0] + [len(p[3]) for p in pools])

    opt = torch.optim.AdamW(model.parameters(), lr=config.pretrain_lr, weight_decay=config.pretrain_weight_decay,
                            betas=(0.9, 0.98))
    sched = _cosine(opt, config.pretrain_steps, config.warmup_fraction)
    per_task = config.pretrain_batch // len(pools)
    gen = torch.Generator().manual_seed(config.seed)
    model.train()
    bar = tqdm(range(config.pretrain_steps), desc="pretrain", disable=not progress, leave=False)
    for _ in bar:
        xs, ys = [], []
        for t, (_, x, y, _, _) in enumerate(pools):
            idx = torch.randint(len(y), (per_task,), generator=gen)
            xs.append(x[idx])
            ys.append(y[idx] + int(offsets[t]))
        x, y = torch.cat(xs), torch.cat(ys)
        x = _shift(x, gen)
        classes, target = torch.unique(y, return_inverse=True)
        choice = torch.randint(1000, (len(classes),), generator=gen)
        text = []
        for k, c in enumerate(classes.tolist()):
            t = int(np.searchsorted(offsets, c, side="right") - 1)
            local = c - int(offsets[t])
            text.append(tokens[t][local][int(choice[k]) % len(tokens[t][local])])
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(torch.stack(text)), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        loss_i2t = F.cross_entropy(logits, target)
        # text -> image: each caption has several positive images; average their log-likelihoods
        logp = logits.T.log_softmax(dim=1)
        pos = F.one_hot(target, len(classes)).T.float()
        loss_t2i = -((logp * pos).sum(1) / pos.sum(1)).mean()
        loss = 0.5 * (loss_i2t + loss_t2i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()


def finetune(model: torch.nn.Module, task: str, config: ZooConfig, progress: bool = True) -> None:
    """Fine-tune only the image encoder on one task against its frozen zero-shot head."""
    from tqdm.auto import tqdm

    data = builtin.load(task, "train", seed=SPLIT_SEED)
    x_all = clip_suite.arrays_to_tensor(data.images, clip_suite.preprocess_cfg(model))
    y_all = torch.tensor(data.labels)
    model.eval()
    head = clip_suite.zero_shot_head(model, data.classnames, data.templates)
    scale = float(model.logit_scale.detach().exp().clamp(max=100))
    params = [p for n, p in model.named_parameters() if n.startswith(MERGE_PREFIX)]
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith(MERGE_PREFIX))
    opt = torch.optim.AdamW(params, lr=config.finetune_lr, weight_decay=0.0)
    sched = _cosine(opt, config.finetune_steps, config.warmup_fraction)
    gen = torch.Generator().manual_seed(config.seed * 1000 + config.tasks.index(task) + 1)
    model.train()
    bar = tqdm(range(config.finetune_steps), desc=f"fine-tune {task}", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(len(y_all), (config.finetune_batch,), generator=gen)
        x = _shift(x_all[idx], gen)
        logits = scale * F.normalize(model.encode_image(x), dim=-1) @ head.T
        loss = F.cross_entropy(logits, y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()


def measure(model, base: dict, experts: dict, config: ZooConfig, progress: bool = True) -> dict:
    """Test accuracies of base, experts and equal-weight task arithmetic, and the quality bars."""
    from tqdm.auto import tqdm

    def acc(task: str) -> float:
        return clip_suite.evaluate(model, dataset=task, split="test", subsample=config.eval_subsample,
                                   seed=SPLIT_SEED)

    tasks = config.tasks
    model.load_state_dict(base)
    base_acc = {t: acc(t) for t in tasks}
    expert_acc = {}
    for t in tasks:
        model.load_state_dict(experts[t])
        expert_acc[t] = acc(t)
    vectors = {t: {k: experts[t][k] - base[k] for k in base if k.startswith(MERGE_PREFIX)
                   and base[k].is_floating_point()} for t in tasks}
    ta: dict[float, dict[str, float]] = {}
    for lam in tqdm(config.lambdas, desc="task arithmetic", disable=not progress, leave=False):
        merged = dict(base)
        for k in vectors[tasks[0]]:
            merged[k] = base[k] + lam * sum(vectors[t][k] for t in tasks)
        model.load_state_dict(merged)
        ta[lam] = {t: acc(t) for t in tasks}
    model.load_state_dict(base)

    mean = lambda d: float(np.mean([d[t] for t in tasks]))  # noqa: E731
    best_lam = max(ta, key=lambda lam: mean(ta[lam]))
    gains = {t: expert_acc[t] - base_acc[t] for t in tasks}
    matches = [lam for lam in ta if all(ta[lam][t] >= expert_acc[t] - EXPERT_MATCH_TOLERANCE for t in tasks)]
    bars = {
        "expert_gain": {
            "rule": f"each expert beats the base on its own task by >= {MIN_EXPERT_GAIN * 100:.0f} points",
            "min_gain": round(min(gains.values()), 4),
            "pass": min(gains.values()) >= MIN_EXPERT_GAIN,
        },
        "merge_has_tradeoffs": {
            "rule": f"no equal-weight task-arithmetic merge is within {EXPERT_MATCH_TOLERANCE * 100:.0f} "
                    "points of every expert",
            "matching_lambdas": matches,
            "pass": not matches,
        },
        "task_arithmetic_gain": {
            "rule": f"the best equal-weight task-arithmetic merge beats the base's mean accuracy by "
                    f">= {MIN_TA_GAIN * 100:.0f} points",
            "gain": round(mean(ta[best_lam]) - mean(base_acc), 4),
            "pass": mean(ta[best_lam]) - mean(base_acc) >= MIN_TA_GAIN,
        },
    }
    per_task = {
        t: {
            "base": round(base_acc[t], 4),
            "expert": round(expert_acc[t], 4),
            "best_task_arithmetic": round(ta[best_lam][t], 4),
            "best_lambda": best_lam,
            "best_own_lambda": max(ta, key=lambda lam: ta[lam][t]),
        }
        for t in tasks
    }
    return {
        "split": "test",
        "tasks": per_task,
        "mean": {"base": round(mean(base_acc), 4), "expert": round(mean(expert_acc), 4),
                 "best_task_arithmetic": round(mean(ta[best_lam]), 4), "best_lambda": best_lam},
        "task_arithmetic": {str(lam): {t: round(v, 4) for t, v in accs.items()} for lam, accs in ta.items()},
        "bars": bars,
        "bars_pass": all(b["pass"] for b in bars.values()),
    }


# --------------------------------------------------------------------------- helpers


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels, one shift per quarter batch (cheap augmentation)."""
    out = torch.empty_like(x)
    for chunk in torch.arange(len(x)).chunk(4):
        dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=gen)).tolist()
        out[chunk] = torch.roll(x[chunk], shifts=(dy, dx), dims=(2, 3))
    return out


def _cosine(opt: torch.optim.Optimizer, steps: int, warmup_fraction: float):
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _contiguous(sd: dict) -> dict:
    return {k: v.contiguous() for k, v in sd.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _open_clip_version() -> str:
    import open_clip

    return getattr(open_clip, "__version__", "unknown")
