"""Cheap real testbeds: small networks whose merges are real yet cheap enough to evaluate densely.

The analytic landscapes (`landscapes.py`) know their front exactly but are smooth by construction.
A testbed here is a real merge problem of the CLIP-ViT-B/32-on-8-tasks kind, small enough that
10⁴-10⁵ real evaluations take seconds, so its true trade-offs can be *measured* by brute force.

Data: scikit-learn's 8x8 handwritten digits (bundled, offline). The tasks are views of the same
images (a quarter turn, half turn, three-quarter turn, mirror images, inversion, a shift, the
transpose, a blur); every view keeps the digit's label. Networks are MLPs on the 64 pixels:

1. *features*: the whole network is pretrained on upright digits mixed with every view; its first
   layer (64 -> 256) is kept frozen from then on, like a pretrained backbone;
2. *base*: the layers to be merged are re-trained on upright digits plus ten images of each view,
   which leaves the base mediocre on every view (like a zero-shot model);
3. *experts*: one per view, the merged layers fine-tuned from the base on that view alone.

Two kinds: ``"hidden"`` (64-256-32-10) merges one hidden layer (256 -> 32) against a frozen head,
the setting of issue 9; ``"deep"`` (64-256-32-32-32-10) merges three hidden layers and the head at
once, with experts fine-tuned harder, so accuracy is a product of coefficient-dependent layers and
a quadratic in c fits it worse (lower leave-one-out R²). The merge is
θ(c) = θ₀ + Σ cᵢτᵢ with τᵢ = θᵢ − θ₀ on the merged layers; accuracy of task i is measured on
view i. Weights are deterministic from the seed and cached as safetensors under
``cache/testbeds/`` (rebuilt when missing or stale).

Two more kinds were added after every constant of the engine was chosen and are never used to
choose one (`UNTUNED_KINDS`; benchmarks report them apart): Fashion-MNIST (Debian's
dataset-fashion-mnist) at 8x8, 3,000 training images, and
- ``"fashion-relabel"`` (64-128-64-10, the hidden layer and the head merged): tasks that conflict.
  Every task sees the upright images; task ``cycle{k}`` renames four consecutive classes (k … k+3,
  mod 10) cyclically, so neighbouring tasks disagree on three classes and tasks four apart on none;
- ``"fashion-views"`` (64-192-48-24-10, two hidden layers merged, the head frozen): the views above
  on garments (a mirror image is nearly the garment itself: that task's base is already good).

Truth by dense real evaluation: `reference_front` is the measured non-dominated set of a dense
Sobol sample of the box, improved by real local search, and `real_margin` says how far a point is
from that truth (see its docstring).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np

from explorer.core.design import normalize_bounds
from explorer.core.pareto import non_dominated, thin
from explorer.demo.landscapes import dominance_gap
from explorer.merging.methods import get_method
from explorer.merging.methods.lines import apply_lines, layer_depths

#: Views in the order tasks are taken from (``n_tasks`` = 8 uses the first eight).
VIEWS = ("rot90", "rot180", "rot270", "hflip", "vflip", "invert", "shift", "transpose", "blur")


class Architecture(NamedTuple):
    """Layer widths and names of an MLP, the layers merged, how hard experts are fine-tuned, the images
    (`data`: "digits" or "fashion") and what the tasks are (`tasks`: "views" of the images under one
    labelling, or "relabel": the upright images under conflicting labellings)."""

    widths: tuple[int, ...]
    names: tuple[str, ...]
    merged: tuple[str, ...]
    expert_lr: float
    data: str = "digits"
    tasks: str = "views"


#: Per kind. Layer 0 ("features") is always frozen. The deep kind's larger expert steps make the
#: product of three merged hidden layers and the merged head visibly non-quadratic in c.
KINDS = {
    "hidden": Architecture((64, 256, 32, 10), ("features", "hidden", "head"), ("hidden",), 1e-3),
    "deep": Architecture((64, 256, 32, 32, 32, 10), ("features", "hidden", "hidden2", "hidden3", "head"),
                         ("hidden", "hidden2", "hidden3", "head"), 1e-2),
    # Built after every constant of the engine was chosen, and never used to choose one (issue #18):
    # another dataset, another width, two layers merged, and tasks that conflict.
    "fashion-relabel": Architecture((64, 128, 64, 10), ("features", "hidden", "head"), ("hidden", "head"), 3e-3,
                                    data="fashion", tasks="relabel"),
    "fashion-views": Architecture((64, 192, 48, 24, 10), ("features", "hidden", "hidden2", "head"),
                                  ("hidden", "hidden2"), 5e-3, data="fashion"),
}
#: kinds no constant of the engine was tuned on: benchmarks report them apart
UNTUNED_KINDS = ("fashion-relabel", "fashion-views")
#: The "relabel" tasks: each renames four consecutive Fashion-MNIST classes cyclically (c → the next of
#: the four) and keeps the other six, so tasks k and k + 1 disagree on three classes' names and tasks
#: four apart on none: conflict of graded strength, in the head and the layer under it.
RELABELS = tuple(f"cycle{k}" for k in range(8))
RELABEL_SPAN = 4
#: Fashion-MNIST images per split (train from its training set, the rest from its test set). The
#: "large" split is the test set's other 9,200 images: distinct real images, for measuring what
#: subsampling saves where sets are large (benchmarks/subsample.py --large).
FASHION_SPLIT_SIZES = (3000, 300, 500)

#: Train / validation / test images (scikit-learn ships 1797 digits).
SPLIT_SIZES = (1000, 300, 497)
#: Largest float64 buffer of one evaluation batch (the "large" split's pre-activations are 14 MB a merge).
MAX_BATCH_BYTES = 2**29
#: Bump when the build recipe changes, so cached weights are rebuilt.
BUILD_VERSION = "2"
DEFAULT_CACHE = Path("cache/testbeds")

# Build recipe (Adam, mini-batches of 128).
FEATURE_STEPS, FEATURE_LR = 1000, 3e-3
BASE_STEPS, BASE_LR, BASE_IMAGES_PER_VIEW = 300, 1e-3, 10
EXPERT_STEPS = 200
BATCH = 128

# Truth search: starts per point (the point itself plus the best pool points), proposals per round.
POOL_STARTS, PROPOSALS, ROUNDS, STEP = 2, 8, 8, 0.1
BUILD_PASSES = 2


# --------------------------------------------------------------------------- data


def _blur(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    return sum(padded[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3)) / 9.0


def _shift(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    out[:, 2:, 2:] = x[:, :-2, :-2]
    return out


_TRANSFORMS = {
    "upright": lambda x: x,
    "rot90": lambda x: np.rot90(x, 1, axes=(1, 2)),
    "rot180": lambda x: np.rot90(x, 2, axes=(1, 2)),
    "rot270": lambda x: np.rot90(x, 3, axes=(1, 2)),
    "hflip": lambda x: x[:, :, ::-1],
    "vflip": lambda x: x[:, ::-1, :],
    "invert": lambda x: 1.0 - x,
    "shift": _shift,
    "transpose": lambda x: np.transpose(x, (0, 2, 1)),
    "blur": _blur,
}


@lru_cache(maxsize=4)
def _digits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """8x8 digits in [0, 1] split train / validation / test by a seeded permutation."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    order = np.random.default_rng([seed, 9]).permutation(len(images))
    out, start = {}, 0
    for split, size in zip(("train", "validation", "test"), SPLIT_SIZES):
        idx = np.sort(order[start:start + size])
        out[split] = (images[idx], bunch.target[idx].astype(np.int64))
        start += size
    return out


#: Copies of each validation image in the "augmented" split: a large evaluation set (3,000 images
#: per view) for measuring what subsampling saves where sets are large (benchmarks/subsample.py).
AUGMENTED_COPIES = 10


@lru_cache(maxsize=4)
def _augmented(seed: int, data: str = "digits") -> tuple[np.ndarray, np.ndarray]:
    """The validation images, `AUGMENTED_COPIES` times, each copy with seeded pixel noise and contrast."""
    images, labels = _images(data, seed)["validation"]
    rng = np.random.default_rng([seed, 31])
    copies = []
    for _ in range(AUGMENTED_COPIES):
        contrast = rng.uniform(0.85, 1.15, (len(images), 1, 1))
        copies.append(np.clip(images * contrast + rng.normal(0.0, 0.08, images.shape), 0.0, 1.0))
    return np.concatenate(copies).astype(np.float32), np.tile(labels, AUGMENTED_COPIES)


@lru_cache(maxsize=2)
def _fashion(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST (Debian's dataset-fashion-mnist) at 8x8 like the digits: the 24x24 centre of each
    28x28 image averaged over 3x3 blocks, in [0, 1]; splits drawn by a seeded permutation."""
    from explorer.suites.datasets import _fashion_raw

    train_x, train_y, test_x, test_y = _fashion_raw()

    def small(x):
        return (x[:, 2:26, 2:26].reshape(len(x), 8, 3, 8, 3).mean(axis=(2, 4)) / 255.0).astype(np.float32)

    rng = np.random.default_rng([seed, 17])
    n_train, n_val, n_test = FASHION_SPLIT_SIZES
    pick = rng.permutation(len(train_y))[:n_train]
    order = rng.permutation(len(test_y))
    held = order[:n_val + n_test]
    out = {"train": (small(train_x[np.sort(pick)]), train_y[np.sort(pick)])}
    val, test, rest = np.sort(held[:n_val]), np.sort(held[n_val:]), np.sort(order[n_val + n_test:])
    out["validation"] = (small(test_x[val]), test_y[val])
    out["test"] = (small(test_x[test]), test_y[test])
    out["large"] = (small(test_x[rest]), test_y[rest])
    return out


def _images(data: str, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return _fashion(seed) if data == "fashion" else _digits(seed)


def task_labels(task: str, labels: np.ndarray) -> np.ndarray:
    """The labels task `task` asks for: renamed for a "relabel" task (`RELABELS`), as they are for a view."""
    if task not in RELABELS:
        return labels
    k = RELABELS.index(task)
    cycle = [(k + j) % 10 for j in range(RELABEL_SPAN)]
    mapping = np.arange(10)
    for j, c in enumerate(cycle):
        mapping[c] = cycle[(j + 1) % RELABEL_SPAN]
    return mapping[labels]


def task_inputs(task: str, images: np.ndarray) -> np.ndarray:
    """What task `task` sees: its view of the images, or the upright images for a "relabel" task."""
    return view("upright" if task in RELABELS else task, images)


def view(name: str, images: np.ndarray) -> np.ndarray:
    """The images (N, 8, 8) seen through view `name`, flattened to (N, 64) float32."""
    if name not in _TRANSFORMS:
        raise ValueError(f"unknown view {name!r}; views are: {', '.join(VIEWS)}")
    return np.ascontiguousarray(_TRANSFORMS[name](images), dtype=np.float32).reshape(len(images), 64)


# --------------------------------------------------------------------------- networks


@contextmanager
def _one_thread():
    """Run torch on one thread: these ops are too small to gain from more, parallel regions stall
    on a shared machine, and results do not then depend on the thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _forward(params: dict, names: tuple[str, ...], x):
    import torch

    h = x
    for i, name in enumerate(names):
        h = h @ params[f"{name}.weight"].T + params[f"{name}.bias"]
        if i < len(names) - 1:
            h = torch.relu(h)
    return h


def _init(widths, names, generator) -> dict:
    """nn.Linear's default initialisation, U(±1/√fan_in), drawn from an explicit generator."""
    import torch

    params = {}
    for (fan_in, fan_out), name in zip(zip(widths[:-1], widths[1:]), names):
        bound = 1.0 / np.sqrt(fan_in)
        params[f"{name}.weight"] = (torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound
        params[f"{name}.bias"] = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
    return params


def _train(params, names, trainable, x, y, steps, lr, seed) -> dict:
    import torch
    import torch.nn.functional as F

    p = {k: v.clone().requires_grad_(k.split(".")[0] in trainable) for k, v in params.items()}
    opt = torch.optim.Adam([v for v in p.values() if v.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(0, len(y), (BATCH,), generator=gen)
        loss = F.cross_entropy(_forward(p, names, x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in p.items()}


def build_weights(kind: str, tasks: tuple[str, ...], seed: int) -> tuple[dict, dict]:
    """Train (base params, {task: expert params of the merged layers}) with torch on CPU.

    One thread, explicit generators: the same seed gives the same weights.
    """
    import torch

    arch = KINDS[kind]
    widths, names, merged, expert_lr = arch.widths, arch.names, arch.merged, arch.expert_lr
    x_train, y_train = _images(arch.data, seed)["train"]
    with _one_thread():
        gen = torch.Generator().manual_seed(seed * 7919 + 1)
        # the backbone sees every view under the true labels (a relabelling is the tasks' business)
        mix_views = ("upright",) + (VIEWS if arch.tasks == "views" else ())
        x_mix = torch.from_numpy(np.concatenate([view(v, x_train) for v in mix_views]))
        y_mix = torch.from_numpy(np.tile(y_train, len(mix_views)))
        pretrained = _train(_init(widths, names, gen), names, set(names), x_mix, y_mix,
                            FEATURE_STEPS, FEATURE_LR, seed * 7919 + 2)
        # the base: merged layers re-drawn (the head keeps its pretrained values) and re-trained
        fresh = _init(widths, names, gen)
        base = dict(pretrained)
        for name in merged:
            if name != "head":
                base[f"{name}.weight"], base[f"{name}.bias"] = fresh[f"{name}.weight"], fresh[f"{name}.bias"]
        rng = np.random.default_rng([seed, 11])
        few = [rng.choice(len(y_train), BASE_IMAGES_PER_VIEW, replace=False) for _ in tasks]
        x_base = torch.from_numpy(np.concatenate([view("upright", x_train)] + [task_inputs(t, x_train[i]) for t, i in zip(tasks, few)]))
        y_base = torch.from_numpy(np.concatenate([y_train] + [task_labels(t, y_train[i]) for t, i in zip(tasks, few)]))
        base = _train(base, names, set(merged), x_base, y_base, BASE_STEPS, BASE_LR, seed * 7919 + 3)
        experts = {}
        for k, task in enumerate(tasks):
            tuned = _train(base, names, set(merged), torch.from_numpy(task_inputs(task, x_train)),
                           torch.from_numpy(task_labels(task, y_train)), EXPERT_STEPS, expert_lr,
                           seed * 7919 + 100 + task_names(kind).index(task))
            experts[task] = {key: v for key, v in tuned.items() if key.split(".")[0] in merged}
    return base, experts


def _load_or_build(kind: str, tasks: tuple[str, ...], seed: int, cache_dir) -> tuple[dict, dict]:
    """Weights from `cache_dir` when a file of this exact build exists; else trained and written there."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file, save_file

    meta = {"format": "merge-explorer-testbed", "version": BUILD_VERSION, "kind": kind,
            "tasks": ",".join(tasks), "seed": str(seed)}
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{kind}-T{len(tasks)}-s{seed}.safetensors"
        if path.exists():
            try:
                with safe_open(str(path), framework="pt") as f:
                    stored = f.metadata() or {}
                if stored == meta:
                    flat = load_file(str(path))
                    base = {k[len("base."):]: v for k, v in flat.items() if k.startswith("base.")}
                    experts = {t: {k[len(t) + 1:]: v for k, v in flat.items() if k.startswith(f"{t}.")} for t in tasks}
                    return base, experts
            except (SafetensorError, OSError, ValueError) as err:
                warnings.warn(f"testbed cache {path} is unreadable ({err}); rebuilding it")
    base, experts = build_weights(kind, tasks, seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        flat = {f"base.{k}": v.contiguous() for k, v in base.items()}
        flat.update({f"{t}.{k}": v.contiguous() for t, ps in experts.items() for k, v in ps.items()})
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(flat, str(tmp), metadata=meta)
        os.replace(tmp, path)
    return base, experts


# --------------------------------------------------------------------------- the testbed


@dataclass(eq=False)
class Testbed:
    """T real merge tasks over a coefficient box; metrics are accuracies in [0, 1] (maximised).

    `__call__` (the `evaluate` of `explorer.explore`) and `values` measure on the validation
    split; `test_values` / `evaluate_test` on the held-out test split. `n_calls` counts the
    evaluations made through `__call__` (what a method under benchmark spends); `values` is the
    batched path used for ground truth and does not count.
    """

    name: str
    kind: str
    seed: int
    tasks: list[str]
    bounds: np.ndarray
    base: dict = field(repr=False)
    experts: dict = field(repr=False)
    truth_samples: int = 2**14
    front_size: int = 128
    n_calls: int = 0
    _splits: dict = field(default_factory=dict, repr=False)
    _truth: dict = field(default_factory=dict, repr=False)
    cache_dir: Path | None = None

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def weights_digest(self) -> str:
        """SHA-256 (first 12 hex digits) of the base and expert weights. Why: training on another CPU can
        round differently and build a different landscape from the same seed, so a benchmark result
        names the build it measured."""
        h = hashlib.sha256()
        for name, params in [("base", self.base)] + [(t, self.experts[t]) for t in self.tasks]:
            for k in sorted(params):
                h.update(f"{name}.{k}".encode())
                h.update(params[k].detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:12]

    @property
    def merged_layers(self) -> tuple[str, ...]:
        return KINDS[self.kind].merged

    def merged_by(self, params: Mapping) -> "Testbed":
        """The same tasks with each expert replaced by θ₀ + τᵢ′ of a merge method (explorer/merging/methods/,
        LiNeS included): merges stay θ₀ + Σ cᵢ τᵢ′, so every measurement here is that method's merge.
        Methods that are not linear in c (Iso-C) do not fit the testbed's batched evaluation: refused."""
        import torch

        method = get_method(params["method"])
        if not method.linear:
            raise ValueError(f"merge method {params['method']!r} is not linear in the coefficients; a testbed "
                             "evaluates linear merges only")
        keys = list(self.experts[self.tasks[0]])
        depths = layer_depths(keys) if params.get("lines") else {}
        experts = {t: dict(self.experts[t]) for t in self.tasks}
        for k in keys:
            b = self.base[k].to(torch.float32)
            stack = method.preprocess(torch.stack([self.experts[t][k].to(torch.float32) - b for t in self.tasks]), k, params)
            if depths:
                stack = apply_lines(stack, k, depths, params["lines"])
            for i, t in enumerate(self.tasks):
                experts[t][k] = (b + stack[i]).to(self.base[k].dtype)
        name = params["method"] + (f"r{method.revision}" if method.revision > 1 else "")  # a new definition: new truth
        suffix = "-".join([name] + (["lines"] if depths else []))
        return replace(self, name=f"{self.name}-{suffix}", experts=experts, n_calls=0, _splits={}, _truth={})

    # ---------------------------------------------------------------- real evaluation

    def _split(self, split: str) -> dict:
        """Per split, what every evaluation shares: frozen features and the first merged layer's basis.

        The first merged layer is linear in c, so its pre-activations are Z₀ + Σ cₖ Zₖ with
        Zₖ = features · τₖᵀ computed once; later merged layers are formed per coefficient vector.
        Stored in float64; `values` says how batches stay exact.
        """
        if split not in self._splits:
            import torch

            if split not in ("validation", "test", "augmented", "large"):
                raise ValueError(f"unknown split {split!r}; use 'validation', 'test', 'augmented' or 'large'")
            data = KINDS[self.kind].data
            if split == "large" and data != "fashion":
                raise ValueError(f"the 'large' split is Fashion-MNIST's; testbed {self.kind!r} is built on {data}")
            images, labels = _augmented(self.seed, data) if split == "augmented" else _images(data, self.seed)[split]
            names, merged = KINDS[self.kind].names, KINDS[self.kind].merged
            base = {k: v.double() for k, v in self.base.items()}
            deltas = {k: torch.stack([self.experts[t][k].double() - base[k] for t in self.tasks])
                      for k in self.experts[self.tasks[0]]}
            x = torch.from_numpy(np.stack([task_inputs(t, images) for t in self.tasks])).double()  # (T, N, 64)
            labels = np.stack([task_labels(t, labels) for t in self.tasks])  # (T, N)
            feats = torch.relu(x @ base["features.weight"].T + base["features.bias"])
            first = merged[0]
            z0 = feats @ base[f"{first}.weight"].T + base[f"{first}.bias"]  # (T, N, H)
            zk = torch.einsum("tni,khi->ktnh", feats, deltas[f"{first}.weight"]) + deltas[f"{first}.bias"][:, None, None, :]
            later = []
            for name in names[names.index(first) + 1:]:
                dw = deltas.get(f"{name}.weight")
                later.append((base[f"{name}.weight"], base[f"{name}.bias"], dw, deltas.get(f"{name}.bias")))
            basis = torch.cat([z0.reshape(1, -1), zk.reshape(self.n_tasks, -1)])  # row 0 is the base
            self._splits[split] = {"basis": basis, "shape": tuple(z0.shape), "later": later,
                                   "labels": torch.from_numpy(labels)}
        return self._splits[split]

    def _check(self, C) -> np.ndarray:
        C = np.atleast_2d(np.asarray(C, dtype=float))
        if C.ndim != 2 or C.shape[1] != self.n_tasks:
            raise ValueError(f"coefficients must have {self.n_tasks} columns (one per task), got shape {C.shape}")
        if not np.all(np.isfinite(C)):
            raise ValueError("coefficients contain NaN or inf")
        return C

    def values(self, C, split: str = "validation", chunk: int = 32, per_example: bool = False) -> np.ndarray:
        """Real accuracies (n, T) of the merges at the rows of C, evaluated in batches; with
        `per_example`, whether each image was classified right instead (n, T, images) bool."""
        import torch

        C = self._check(C)
        s = self._split(split)
        t, n_img, width = s["shape"]
        rows = t * n_img
        out = np.empty((len(C), t, n_img), dtype=bool) if per_example else np.empty((len(C), t))
        chunk = max(1, min(chunk, len(C), MAX_BATCH_BYTES // (rows * width * 8)))  # the float64 buffer below
        # Coefficient-weighted sums run in float64 and are rounded once to float32, the rest runs in
        # float32 with one matrix product per merge (bmm), so a merge's accuracies do not depend on
        # the batch it is evaluated in. Buffers are reused: fresh large allocations cost more than the
        # arithmetic.
        f32, f64 = torch.float32, torch.float64
        pre = torch.empty(chunk, rows * width, dtype=f64)
        first = torch.empty(chunk, rows, width, dtype=f32)
        later = [torch.empty(chunk, rows, w0.shape[0], dtype=f32) for w0, _, _, _ in s["later"]]
        with torch.no_grad(), _one_thread():
            for start in range(0, len(C), chunk):
                c = torch.from_numpy(C[start:start + chunk])
                m = len(c)
                ones_c = torch.cat([torch.ones(m, 1, dtype=f64), c], 1)
                h = first[:m]
                h.view(m, -1).copy_(torch.mm(ones_c, s["basis"], out=pre[:m]))
                h.relu_()
                for i, (w0, b0, dw, db) in enumerate(s["later"]):
                    if dw is None:
                        w, b = w0.to(f32).expand(m, -1, -1), b0.to(f32)
                    else:
                        w = (w0 + torch.einsum("mk,koi->moi", c, dw)).to(f32)
                        b = (b0 + c @ db).to(f32)[:, None, :]
                    h = torch.bmm(h, w.transpose(1, 2), out=later[i][:m]).add_(b)
                    if i < len(s["later"]) - 1:
                        h.relu_()
                correct = h.argmax(-1).view(m, t, n_img) == s["labels"]
                out[start:start + m] = correct.numpy() if per_example else correct.sum(-1).numpy() / n_img
        return out

    def test_values(self, C) -> np.ndarray:
        """Real accuracies (n, T) on the held-out test split."""
        return self.values(C, split="test")

    def __call__(self, coefficients) -> dict[str, float]:
        """The `evaluate` signature of `explorer.explore`: one vector in, {task: accuracy} out."""
        c = np.asarray(coefficients, dtype=float)
        if c.shape != (self.n_tasks,):
            raise ValueError(f"coefficients must have shape ({self.n_tasks},), got {c.shape}")
        self.n_calls += 1
        return dict(zip(self.tasks, self.values(c[None])[0].tolist()))

    def evaluate_test(self, coefficients) -> dict[str, float]:
        """Test-split accuracies of one merge (not counted in `n_calls`: it is not what a method sees)."""
        c = np.asarray(coefficients, dtype=float)
        return dict(zip(self.tasks, self.test_values(c[None])[0].tolist()))

    # ---------------------------------------------------------------- truth

    def _pool(self, samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Dense real sample of the box: informative corners plus `samples` scrambled-Sobol points."""
        from scipy.stats import qmc

        t, lo, hi = self.n_tasks, self.bounds[:, 0], self.bounds[:, 1]
        lams = np.linspace(0.0, 1.0, 21)[:, None]
        corners = np.clip(np.vstack([np.zeros(t), np.eye(t), lams * np.ones(t)]), lo, hi)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            unit = qmc.Sobol(d=t, scramble=True, seed=self.seed + 4242).random(samples)
        X = np.vstack([corners, qmc.scale(unit, lo, hi)])
        return X, self.values(X)

    def _search(self, points: np.ndarray, reference: np.ndarray, pool: tuple[np.ndarray, np.ndarray]):
        """Most every task can gain at once over each reference (n, T), starting near `points`.

        Starts: the point itself and the `POOL_STARTS` pool points whose smallest gain over the
        reference is largest. From each, real random local search: every round draws `PROPOSALS`
        Gaussian moves per start, keeps the best if it raises the smallest gain (ties broken by
        the mean gain), and halves the step otherwise. Random draws are seeded by the point's
        bytes, so a point's answer does not depend on the batch it came in.
        Returns (best smallest gain (n,), where (n, T), measured there (n, T)).
        """
        PX, PV = pool
        n, t = len(points), self.n_tasks
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        span = hi - lo
        starts, refs, keys = [], [], []
        best_gain, best_x, best_v = np.empty(n), np.empty((n, t)), np.empty((n, t))
        for j in range(n):
            gains = (PV - reference[j]).min(axis=1)
            order = np.argsort(-(gains + 1e-3 * (PV - reference[j]).mean(axis=1)), kind="stable")[:POOL_STARTS]
            best_gain[j], best_x[j], best_v[j] = gains[order[0]], PX[order[0]], PV[order[0]]
            for s, x in enumerate([points[j]] + [PX[i] for i in order]):
                starts.append(x)
                refs.append(j)
                digest = hashlib.sha256(np.ascontiguousarray(points[j], dtype=np.float64).tobytes() + bytes([s])).digest()
                keys.append(int.from_bytes(digest[:8], "little"))
        X = np.array(starts)
        refs = np.array(refs)
        V = self.values(X)
        R = reference[refs]

        def score(v, r):
            d = v - r
            return d.min(axis=-1) + 1e-3 * d.mean(axis=-1)

        cur = score(V, R)
        sigma = np.full(len(X), STEP)
        rngs = [np.random.default_rng(k) for k in keys]
        seen = [(X.copy(), V.copy(), refs)]  # everything evaluated, with the reference it belongs to
        for _ in range(ROUNDS):
            active = np.nonzero(sigma > 1e-3)[0]
            if not len(active):
                break
            props = np.concatenate([np.clip(X[a] + sigma[a] * span * rngs[a].standard_normal((PROPOSALS, t)), lo, hi)
                                    for a in active])
            pv = self.values(props)
            seen.append((props, pv, np.repeat(refs[active], PROPOSALS)))
            ps = score(pv, np.repeat(R[active], PROPOSALS, axis=0)).reshape(len(active), PROPOSALS)
            pick = ps.argmax(axis=1)
            for row, a in enumerate(active):
                if ps[row, pick[row]] > cur[a]:
                    k = row * PROPOSALS + pick[row]
                    X[a], V[a], cur[a] = props[k], pv[k], ps[row, pick[row]]
                else:
                    sigma[a] /= 2
        for xs, vs, owner in seen:
            g = (vs - reference[owner]).min(axis=1)
            for j in np.unique(owner):
                mine = np.nonzero(owner == j)[0]
                i = mine[int(np.argmax(g[mine]))]
                if g[i] > best_gain[j]:
                    best_gain[j], best_x[j], best_v[j] = g[i], xs[i], vs[i]
        return best_gain, best_x, best_v

    def _truth_for(self, samples: int | None = None) -> dict:
        """Pool, front and certification of the dense real truth (cached in memory and on disk)."""
        samples = self.truth_samples if samples is None else int(samples)
        key = (samples, self.front_size)
        if key in self._truth:
            return self._truth[key]
        path = None
        if self.cache_dir is not None:
            box = hashlib.sha256(np.ascontiguousarray(self.bounds, dtype=np.float64).tobytes()).hexdigest()[:8]
            path = Path(self.cache_dir) / f"{self.name}-truth-{samples}-{self.front_size}-{box}-v{BUILD_VERSION}.npz"
            if path.exists():
                try:
                    with np.load(path, allow_pickle=False) as z:
                        self._truth[key] = {k: z[k] for k in ("pool_x", "pool_v", "front")}
                    return self._truth[key]
                except (OSError, ValueError, KeyError) as err:
                    warnings.warn(f"testbed truth cache {path} is unreadable ({err}); recomputing it")
        PX, PV = self._pool(samples)
        for _ in range(BUILD_PASSES):  # climb from the measured front: endpoints join the pool
            nd = non_dominated(-PV)
            start = nd[thin(PV[nd], self.front_size, self.seed)]
            gain, bx, bv = self._search(PX[start], PV[start], (PX, PV))
            better = gain > 0
            if not better.any():
                break
            PX, PV = np.vstack([PX, bx[better]]), np.vstack([PV, bv[better]])
        # certify with the pool frozen: keep the points the search (exactly what real_margin runs) cannot beat
        nd = non_dominated(-PV)
        front = nd[thin(PV[nd], self.front_size, self.seed)]
        gain, _, _ = self._search(PX[front], PV[front], (PX, PV))
        front = front[gain <= 0]
        truth = {"pool_x": PX, "pool_v": PV, "front": front}
        self._truth[key] = truth
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez(tmp, **truth)
            os.replace(tmp, path)
        return truth

    def reference_front(self, n: int | None = None, samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(coefficients, measured accuracies) of the true front, at most `n` points spread along it.

        The non-dominated set of `samples` (default `truth_samples`) scrambled-Sobol points plus
        corners, all evaluated for real, improved by real local search from its points until a
        pass finds no point that gains in every task (at most a few passes), then thinned to
        `front_size`. Every returned point has `real_margin` 0.
        """
        truth = self._truth_for(samples)
        idx = truth["front"]
        X, V = truth["pool_x"][idx], truth["pool_v"][idx]
        if n is not None and n < len(idx):
            pick = thin(V, n, self.seed)
            X, V = X[pick], V[pick]
        return X.copy(), V.copy()

    def real_margin(self, C, samples: int | None = None, return_points: bool = False):
        """The most every task could gain at once over each row of C, in accuracy units (n,).

        margin(c) = max over c' in the box of minᵢ (accᵢ(c') − accᵢ(c)), clipped at 0, with all
        accuracies measured for real on the validation split. The max is taken over the dense
        pool behind `reference_front` and a real local search (see `_search`) started at c and
        at the pool points that beat c most. 0 means nothing found improves every task, i.e. c
        is (as far as dense search can tell) on the front. With `return_points`, also returns
        the improving point c' (c itself where the margin is 0) and its accuracies.
        """
        C = self._check(C)
        truth = self._truth_for(samples)
        pool = (truth["pool_x"], truth["pool_v"])
        V = self.values(C)
        gain, where, measured = self._search(C, V, pool)
        margin = np.maximum(gain, 0.0)
        if not return_points:
            return margin
        none = gain <= 0
        where[none], measured[none] = C[none], V[none]
        return margin, where, measured

    def dominance_gap(self, values, samples: int | None = None) -> np.ndarray:
        """Per row of `values` (measured accuracies), how far the reference front dominates it (IGD+ of one point)."""
        _, front = self.reference_front(samples=samples)
        return dominance_gap(np.atleast_2d(values), front)


def task_names(kind: str) -> tuple[str, ...]:
    """The tasks a testbed of `kind` takes its first `n_tasks` from."""
    return RELABELS if KINDS[kind].tasks == "relabel" else VIEWS


def make_testbed(kind: str = "hidden", n_tasks: int = 8, seed: int = 0, cache_dir=DEFAULT_CACHE,
                 bounds=(0.0, 1.0), truth_samples: int = 2**14, front_size: int = 128) -> Testbed:
    """A testbed of `n_tasks` tasks (the first of `task_names(kind)`) of a kind in `KINDS` (module docstring).

    Weights come from `cache_dir` when built before with the same recipe, else are trained here
    (seconds) and written there; `cache_dir=None` trains without caching. `truth_samples` and
    `front_size` size the dense ground truth behind `reference_front` and `real_margin`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown testbed kind {kind!r}; choose one of {', '.join(KINDS)}")
    names = task_names(kind)
    if not 2 <= n_tasks <= len(names):
        raise ValueError(f"a testbed of kind {kind!r} has 2 to {len(names)} tasks, got n_tasks={n_tasks}")
    tasks = names[:n_tasks]
    base, experts = _load_or_build(kind, tasks, int(seed), cache_dir)
    return Testbed(name=f"{kind}-T{n_tasks}-s{seed}", kind=kind, seed=int(seed), tasks=list(tasks),
                   bounds=normalize_bounds(bounds, n_tasks), base=base, experts=experts,
                   truth_samples=int(truth_samples), front_size=int(front_size),
                   cache_dir=None if cache_dir is None else Path(cache_dir))
