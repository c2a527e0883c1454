"""CLIP zero-shot task evaluation: the evaluator behind the demo and the 8-task ViT-B/32 setting.

Only the image encoder is merged, so each task's classification head (class-name prompts through
the text tower) is the same for every merge: it is built once per process and cached. Evaluation
images are decoded and preprocessed once per task and kept as tensors (on the model's device), so
evaluating a new coefficient vector costs only image-encoder forward passes.

Entry point: :func:`evaluate`, ``function(model, **params) -> float`` as in docs/ARCHITECTURE.md,
with ``evaluate.fingerprint(**params)`` naming the data it reads.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from explorer.suites import datasets as builtin

DEFAULT_TEMPLATES = ("a photo of a {}.",)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Sub-folder names tried, in order, for a split of an ImageFolder dataset.
SPLIT_DIRS = {"train": ("train",), "validation": ("validation", "val", "valid"), "test": ("test",)}
METRICS = ("accuracy", "loss")

_HEADS: dict[tuple, torch.Tensor] = {}
_DATA: dict[tuple, "EvalData"] = {}


@dataclass(frozen=True)
class EvalData:
    """Preprocessed images (N, 3, H, W) float32 and labels (N,) int64, on one device."""

    images: torch.Tensor
    labels: torch.Tensor
    classnames: tuple[str, ...]
    templates: tuple[str, ...]


# --------------------------------------------------------------------------- public API


def evaluate(
    model: torch.nn.Module,
    *,
    dataset: str,
    classnames: Sequence[str] | str | None = None,
    templates: Sequence[str] | str | None = None,
    split: str = "validation",
    subsample: int | None = None,
    metric: str = "accuracy",
    batch_size: int = 256,
    seed: int = 0,
    spec_dir: str | os.PathLike | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
) -> float | np.ndarray:
    """Zero-shot classification accuracy in [0, 1] (or mean cross-entropy in nats) of a CLIP model.

    ``dataset`` is a built-in name (see ``explorer.suites.datasets.names()``) or a torchvision ImageFolder
    directory (relative paths resolve against ``spec_dir``); the directory either holds one folder
    per class or split sub-folders (``train``, ``validation``/``val``, ``test``) that do.
    ``classnames`` defaults to the built-in's names or the class folder names (``_`` -> space); it
    may be a list or a text file with one name per line. ``templates`` (``{}`` = class name) default
    to the built-in's prompts or ``"a photo of a {}."``; also a list or a file. ``subsample`` keeps a
    seeded subset of that many images; ``seed`` also fixes a built-in's split.

    ``indices`` (positions in the evaluation set, see ``n_examples``): score only those images and
    return one score per image (1.0/0.0 correct, or the cross-entropy), whose mean is the metric.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    device = _model_device(model)
    data = eval_data(
        model, dataset=dataset, classnames=classnames, templates=templates, split=split,
        subsample=subsample, seed=seed, spec_dir=spec_dir, device=device,
    )
    head = zero_shot_head(model, data.classnames, data.templates)
    scale = _logit_scale(model)
    correct, loss_sum = 0, 0.0
    chosen = None
    if indices is not None:
        chosen = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if chosen.ndim != 1 or (len(chosen) and (int(chosen.min()) < 0 or int(chosen.max()) >= len(data.labels))):
            raise ValueError(f"indices must be positions in the {len(data.labels)} images of {dataset!r}")
        chosen = chosen.to(data.labels.device)
    per_example = []
    n = len(data.labels) if chosen is None else len(chosen)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _autocast(device):
            for start in range(0, n, batch_size):
                if chosen is None:
                    x, y = data.images[start:start + batch_size], data.labels[start:start + batch_size]
                else:
                    pick = chosen[start:start + batch_size]
                    x, y = data.images[pick], data.labels[pick]
                feats = F.normalize(model.encode_image(x).float(), dim=-1)
                logits = scale * feats @ head.T
                hits = logits.argmax(dim=-1) == y
                correct += int(hits.sum())
                if metric == "loss":
                    losses = F.cross_entropy(logits, y, reduction="none")
                    loss_sum += float(losses.sum())
                if chosen is not None:
                    per_example.append((losses if metric == "loss" else hits.float()).cpu().numpy())
    finally:
        model.train(was_training)
    if chosen is not None:
        return np.concatenate(per_example).astype(np.float64) if per_example else np.zeros(0)
    return correct / n if metric == "accuracy" else loss_sum / n


def n_examples(model: torch.nn.Module, *, dataset: str, classnames=None, templates=None, split: str = "validation",
               subsample: int | None = None, seed: int = 0, spec_dir=None, **_ignored) -> int:
    """How many images `evaluate` scores with these params (what its ``indices`` point into)."""
    data = eval_data(model, dataset=dataset, classnames=classnames, templates=templates, split=split,
                     subsample=subsample, seed=seed, spec_dir=spec_dir, device=_model_device(model))
    return len(data.labels)


evaluate.n_examples = n_examples  # type: ignore[attr-defined]


def fingerprint(
    *,
    dataset: str,
    split: str = "validation",
    subsample: int | None = None,
    seed: int = 0,
    spec_dir: str | os.PathLike | None = None,
    **_ignored,
) -> str:
    """A string that changes when the evaluation images change (not when merge weights do).

    Built-ins: name, split, subsample, seed and ``datasets.DATA_VERSION``. ImageFolder: a hash of
    every image's path relative to the split folder and its size in bytes.
    """
    if dataset in builtin.names():
        return builtin.fingerprint(dataset, split, seed=seed, subsample=subsample)
    root = _split_dir(_resolve_folder(dataset, spec_dir), split)
    h = hashlib.sha256()
    for path in _image_files(root):
        h.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\n".encode())
    return f"imagefolder:{h.hexdigest()[:32]}:split={split}:subsample={subsample}:seed={seed}"


evaluate.fingerprint = fingerprint  # type: ignore[attr-defined]


def precision(device: str) -> str:
    """The number format `evaluate` computes in on a device kind (see `_autocast`); part of a task's identity."""
    return "float16-autocast" if device == "cuda" else "float32"


evaluate.precision = precision  # type: ignore[attr-defined]
#: What `evaluate` computes, versioned by hand from here on: bump it when a change alters a score.
evaluate.version = "clip-2"  # type: ignore[attr-defined]
#: The identities this suite had before (release 0.1.0 at explorer/clip_suite.py; then the source
#: hashes of explorer/suites/clip.py as named through the alias and directly, before `indices` came):
#: none of those changes altered a score, so results stored under them are served.
evaluate.previous_versions = (  # type: ignore[attr-defined]
    "source:a394460bea4a0e3a92a35977388dc98f4ddd23a1ad82b9319e0eb978b5135336",
    "source:8f4c4b76bf04a21b10f3c2db26a22731c0af7efa7ac629371d1bd18d40636966",
    "source:378ebd37efaab2623d5fa8c2bc27d51111cf73c56b62907f165289d0d315aabf",
)


def zero_shot_head(
    model: torch.nn.Module, classnames: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> torch.Tensor:
    """(C, D) unit-norm class embeddings: normalize(mean_t normalize(encode_text(t.format(c)))).

    Cached per process by the text tower's identity (a digest of its weights), the class names and
    the templates: merges only touch the image encoder, so the head is built once per task.
    """
    if not classnames:
        raise ValueError("zero_shot_head needs at least one class name")
    if not templates:
        raise ValueError("zero_shot_head needs at least one prompt template")
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"prompt template {t!r} has no '{{}}' for the class name")
    device = _model_device(model)
    key = (text_tower_digest(model), tuple(classnames), tuple(templates), str(device))
    head = _HEADS.get(key)
    if head is None:
        head = build_head(model, classnames, templates)
        _HEADS[key] = head
    return head


def build_head(
    model: torch.nn.Module, classnames: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """Uncached :func:`zero_shot_head` (also used with gradients off during zoo fine-tuning)."""
    device = _model_device(model)
    tokenize = _tokenizer(model)
    rows = []
    with torch.inference_mode():
        for name in classnames:
            tokens = tokenize([t.format(name) for t in templates]).to(device)
            emb = F.normalize(model.encode_text(tokens).float(), dim=-1)
            rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows).clone()


def text_tower_digest(model: torch.nn.Module) -> str:
    """Cheap identity of everything outside the image encoder (names, shapes, sums)."""
    h = hashlib.sha256(type(model).__name__.encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("visual.") or name == "logit_scale":
                continue
            d = p.detach().double()
            h.update(f"{name}{tuple(p.shape)}{float(d.sum()):.10e}{float((d * d).sum()):.10e}".encode())
    return h.hexdigest()[:24]


def eval_data(
    model: torch.nn.Module,
    *,
    dataset: str,
    classnames: Sequence[str] | str | None = None,
    templates: Sequence[str] | str | None = None,
    split: str = "validation",
    subsample: int | None = None,
    seed: int = 0,
    spec_dir: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
) -> EvalData:
    """Decoded, preprocessed evaluation tensors for one task, cached per process."""
    device = torch.device(device) if device is not None else _model_device(model)
    pp = preprocess_cfg(model)
    spec_key = str(Path(spec_dir).resolve()) if spec_dir is not None else None
    key = (
        dataset, _freeze(classnames), _freeze(templates), split, subsample, seed, spec_key,
        tuple(sorted((k, str(v)) for k, v in pp.items())), str(device),
    )
    cached = _DATA.get(key)
    if cached is not None:
        return cached
    if dataset in builtin.names():
        data = _builtin_data(dataset, split, subsample, seed, classnames, templates, spec_dir, pp)
    else:
        data = _folder_data(dataset, split, subsample, seed, classnames, templates, spec_dir, pp)
    data = EvalData(data.images.to(device), data.labels.to(device), data.classnames, data.templates)
    _DATA[key] = data
    return data


def clear_caches() -> None:
    """Forget cached heads and evaluation tensors (frees GPU memory)."""
    _HEADS.clear()
    _DATA.clear()


def preprocess_cfg(model: torch.nn.Module) -> dict:
    """open_clip's preprocessing settings for ``model`` (size, mean, std, interpolation, ...)."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    cfg = dict(open_clip.get_model_preprocess_cfg(model) or {})
    visual = getattr(model, "visual", model)
    cfg.setdefault("size", getattr(visual, "image_size", 224))
    defaults = PreprocessCfg()
    for field in ("mode", "mean", "std", "interpolation", "resize_mode", "fill_color"):
        cfg.setdefault(field, getattr(defaults, field))
    return cfg


def arrays_to_tensor(images: np.ndarray, cfg: dict) -> torch.Tensor:
    """uint8 grayscale (N, H, W) arrays -> normalised (N, 3, H, W) float32, per ``preprocess_cfg``.

    At the model's own image size open_clip's eval transform reduces to scaling and normalising
    (resize and crop are identities), so this skips PIL; otherwise it falls back to the transform.
    """
    size = cfg["size"]
    size = size if isinstance(size, int) else size[0]
    if images.shape[1:] != (size, size):
        return _transform_pils(builtin.to_pil(images), cfg)
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
    x = x.unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def check_state_dict(
    architecture: str,
    state_dict: dict[str, torch.Tensor],
    *,
    checkpoint: str = "checkpoint",
    config_dir: str | os.PathLike | None = None,
) -> None:
    """Raise if ``state_dict`` cannot load into open_clip ``architecture``, naming the first bad tensor.

    Checked: shapes first (the common mistake: weights of another architecture), then missing and
    unexpected keys.
    """
    expected = expected_shapes(architecture, config_dir=config_dir)
    for key, tensor in state_dict.items():
        if key in expected and tuple(tensor.shape) != expected[key]:
            raise ValueError(
                f"checkpoint {checkpoint} has tensor {key!r} of shape {tuple(tensor.shape)}; "
                f"architecture {architecture!r} expects {expected[key]}"
            )
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise ValueError(
            f"checkpoint {checkpoint} lacks tensor {missing[0]!r} that architecture {architecture!r} "
            f"expects ({len(missing)} missing in all)"
        )
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        raise ValueError(
            f"checkpoint {checkpoint} has tensor {unexpected[0]!r} that architecture {architecture!r} "
            f"does not have ({len(unexpected)} unexpected in all)"
        )


def expected_shapes(architecture: str, *, config_dir: str | os.PathLike | None = None) -> dict[str, tuple]:
    """Tensor shapes of an open_clip architecture, built on the meta device (no memory, no download)."""
    import open_clip

    if config_dir is not None:
        open_clip.add_model_config(Path(config_dir))
    if open_clip.get_model_config(architecture) is None:
        raise ValueError(
            f"unknown open_clip architecture {architecture!r}"
            + (f" (also looked in {config_dir})" if config_dir is not None else "")
        )
    with torch.device("meta"):
        cfg = open_clip.get_model_config(architecture)
        custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
        if "multimodal_cfg" in cfg:
            model = open_clip.CoCa(**cfg)
        elif custom:
            model = open_clip.CustomTextCLIP(**cfg)
        else:
            model = open_clip.CLIP(**cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- internals


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return torch.autocast(device_type="cpu", enabled=False)


def _logit_scale(model: torch.nn.Module) -> float:
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        return float(scale.detach().exp().clamp(max=100.0))
    return 100.0


def _tokenizer(model: torch.nn.Module):
    import open_clip

    context_length = getattr(model, "context_length", 77) or 77
    return lambda texts: open_clip.tokenize(texts, context_length=context_length)


def _freeze(value):
    if value is None or isinstance(value, str):
        return value
    return tuple(value)


def _read_list(value: Sequence[str] | str | None, what: str, spec_dir) -> tuple[str, ...] | None:
    """A list given inline, or a text file (one entry per line, relative to spec_dir)."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        path = _resolve(value, spec_dir)
        if not path.is_file():
            raise FileNotFoundError(f"{what} file {str(value)!r} not found (looked at {path})")
        items = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        if not items:
            raise ValueError(f"{what} file {path} is empty")
        return items
    return tuple(str(v) for v in value)


def _resolve(path: str | os.PathLike, spec_dir) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and spec_dir is not None:
        p = Path(spec_dir) / p
    return p.resolve()


def _resolve_folder(dataset: str, spec_dir) -> Path:
    path = _resolve(dataset, spec_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"dataset {dataset!r} is neither a built-in ({', '.join(builtin.names())}) "
            f"nor an existing ImageFolder directory (looked at {path})"
        )
    return path


def _split_dir(root: Path, split: str) -> Path:
    if split not in SPLIT_DIRS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLIT_DIRS)}")
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    others = [n for names in SPLIT_DIRS.values() for n in names if (root / n).is_dir()]
    if others:
        raise FileNotFoundError(
            f"dataset folder {root} has split folder(s) {', '.join(others)} but none for split "
            f"{split!r} (tried {', '.join(SPLIT_DIRS[split])})"
        )
    return root  # the folder holds the class folders directly


def _class_dirs(root: Path) -> list[Path]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"dataset folder {root} has no class sub-folders (ImageFolder layout expected)")
    return classes


def _image_files(root: Path) -> list[Path]:
    return [
        p for c in _class_dirs(root) for p in sorted(c.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    ]


def _transform_pils(images: list, cfg: dict) -> torch.Tensor:
    from open_clip.transform import PreprocessCfg, image_transform_v2

    known = set(PreprocessCfg.__dataclass_fields__)
    transform = image_transform_v2(PreprocessCfg(**{k: v for k, v in cfg.items() if k in known}), is_train=False)
    return torch.stack([transform(im) for im in images])


def _builtin_data(dataset, split, subsample, seed, classnames, templates, spec_dir, pp) -> EvalData:
    data = builtin.load(dataset, split, seed=seed, subsample=subsample)
    names = _read_list(classnames, "classnames", spec_dir) or data.classnames
    if len(names) != len(data.classnames):
        raise ValueError(
            f"{len(names)} class names given for built-in dataset {dataset!r}, which has "
            f"{len(data.classnames)} classes ({', '.join(data.classnames)})"
        )
    temps = _read_list(templates, "templates", spec_dir) or data.templates
    x = arrays_to_tensor(data.images, pp)
    return EvalData(x, torch.tensor(np.array(data.labels), dtype=torch.int64), tuple(names), tuple(temps))


def _folder_data(dataset, split, subsample, seed, classnames, templates, spec_dir, pp) -> EvalData:
    from PIL import Image, UnidentifiedImageError

    root = _split_dir(_resolve_folder(dataset, spec_dir), split)
    class_dirs = _class_dirs(root)
    names = _read_list(classnames, "classnames", spec_dir)
    if names is None:
        names = tuple(c.name.replace("_", " ") for c in class_dirs)
    elif len(names) != len(class_dirs):
        raise ValueError(
            f"{len(names)} class names given but dataset folder {root} has {len(class_dirs)} "
            f"class folders ({', '.join(c.name for c in class_dirs[:5])}{', ...' if len(class_dirs) > 5 else ''})"
        )
    temps = _read_list(templates, "templates", spec_dir) or DEFAULT_TEMPLATES
    index = {c: i for i, c in enumerate(class_dirs)}
    files = [(p, index[next(c for c in class_dirs if c in p.parents)]) for p in _image_files(root)]
    if not files:
        raise FileNotFoundError(f"dataset folder {root} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    if subsample is not None and subsample < len(files):
        if subsample <= 0:
            raise ValueError(f"subsample must be positive, got {subsample} for dataset {dataset!r}")
        keep = np.sort(np.random.default_rng([seed, 7919]).choice(len(files), size=subsample, replace=False))
        files = [files[i] for i in keep]
    images, labels, bad = [], [], []
    for path, label in files:
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
            labels.append(label)
        except (UnidentifiedImageError, OSError, ValueError):
            bad.append(path)
    if bad:
        warnings.warn(
            f"skipped {len(bad)} of {len(files)} images in {root} that failed to decode "
            f"(first: {bad[0].relative_to(root)})",
            stacklevel=3,
        )
    if not images:
        raise ValueError(f"no image in dataset folder {root} could be decoded")
    x = _transform_pils(images, pp)
    return EvalData(x, torch.tensor(labels, dtype=torch.int64), tuple(names), tuple(temps))
