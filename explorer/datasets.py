"""Built-in offline image-classification datasets for the demo and the tests.

Every dataset is available without a network connection, is small enough to train on two CPU
cores, and is split into train / validation / test deterministically from a seed, so that the
zoo, the evaluator and the tests all see the same images. Images are returned as uint8 arrays
of shape (N, 28, 28) (grayscale, 0 = background); `to_pil` converts them for open_clip's
transforms.

Built-ins:

- ``fashion_mnist``: Zalando's Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
  (torchvision's downloader into ~/.cache/merge-explorer where the package is missing).
- ``digits``: scikit-learn's 8x8 handwritten digits, upsampled to 28x28.
- ``rotated_digits``: the same digits turned a quarter turn clockwise, so "six" looks unlike any
  upright digit; same labels, conflicting visual evidence.
- ``font_letters``: notMNIST-style letters A-J rendered from the installed TrueType fonts with
  seeded random font, size, offset and rotation.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

#: Bump when the images a built-in produces change, so cached evaluations are invalidated.
DATA_VERSION = "1"

SPLITS = ("train", "validation", "test")
IMAGE_SIZE = 28

FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FONT_DIRS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/TTF"), Path("/usr/local/share/fonts"))

FASHION_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LETTER_CLASSES = tuple("ABCDEFGHIJ")

#: Prompt templates per built-in (the class name is formatted into ``{}``).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("a photo of a {}.", "a photo of the {}, a type of clothing.", "a grayscale photo of a {}."),
    "digits": ("a photo of the digit {}.", "a handwritten {}.", "the number {}."),
    "rotated_digits": ("a rotated photo of the digit {}.", "a handwritten {}, turned sideways.", "the number {} on its side."),
    "font_letters": ("a photo of the letter {}.", "the letter {} in a font.", "a typed {}."),
}


@dataclass(frozen=True)
class Split:
    """One split of a built-in dataset: uint8 images (N, 28, 28), int64 labels (N,), class names."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    classnames: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def templates(self) -> tuple[str, ...]:
        return TEMPLATES[self.name]


def names() -> list[str]:
    """Names of the built-in datasets."""
    return list(_LOADERS)


def load(name: str, split: str = "validation", *, seed: int = 0, subsample: int | None = None) -> Split:
    """Load one split of a built-in dataset.

    The seed fixes the train/validation/test partition (and, for ``font_letters``, the rendering),
    so two calls with the same arguments return identical arrays. ``subsample`` keeps a seeded
    random subset of that many images (all of them when larger than the split).
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown built-in dataset {name!r}; built-ins are: {', '.join(names())}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for dataset {name!r}; use one of {', '.join(SPLITS)}")
    images, labels, classnames = _LOADERS[name](split, seed)
    if subsample is not None:
        if subsample <= 0:
            raise ValueError(f"subsample must be positive, got {subsample} for dataset {name!r}")
        if subsample < len(labels):
            rng = np.random.default_rng([seed, 7919])
            keep = np.sort(rng.choice(len(labels), size=subsample, replace=False))
            images, labels = images[keep], labels[keep]
    images.setflags(write=False)
    labels.setflags(write=False)
    return Split(name, split, images, labels, tuple(classnames))


def fingerprint(name: str, split: str, *, seed: int = 0, subsample: int | None = None) -> str:
    """A string that changes whenever the images of ``load(name, split, ...)`` can change."""
    return f"builtin:{name}:{split}:seed={seed}:subsample={subsample}:v{DATA_VERSION}"


def to_pil(images: np.ndarray) -> list:
    """uint8 (N, H, W) arrays -> list of RGB PIL images (what open_clip's transforms expect)."""
    from PIL import Image

    return [Image.fromarray(np.ascontiguousarray(im), mode="L").convert("RGB") for im in images]


def content_hash(split: Split) -> str:
    """SHA-256 of a split's images and labels (for tests and manifests)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(split.images).tobytes())
    h.update(np.ascontiguousarray(split.labels).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- partitioning


def _partition(n: int, sizes: tuple[int, int, int], seed: int, salt: int) -> dict[str, np.ndarray]:
    """Seeded disjoint index sets of the given sizes for train / validation / test."""
    if sum(sizes) > n:
        raise ValueError(f"split sizes {sizes} exceed the {n} available images")
    order = np.random.default_rng([seed, salt]).permutation(n)
    out, start = {}, 0
    for split, size in zip(SPLITS, sizes):
        out[split] = np.sort(order[start:start + size])
        start += size
    return out


# --------------------------------------------------------------------------- Fashion-MNIST

FASHION_SIZES = {"train": 6000, "validation": 1000, "test": 2000}


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


FASHION_DOWNLOAD_ROOT = Path.home() / ".cache" / "merge-explorer"
#: Set MERGE_EXPLORER_OFFLINE=1 to never try a download.
ALLOW_DOWNLOAD = os.environ.get("MERGE_EXPLORER_OFFLINE", "") != "1"


def _fashion_dir() -> Path:
    """Debian's copy when installed, else torchvision's downloader (where there is internet)."""
    downloaded = FASHION_DOWNLOAD_ROOT / "FashionMNIST" / "raw"
    for d in (*FASHION_MNIST_DIRS, downloaded):
        if (d / "train-images-idx3-ubyte.gz").is_file():
            return d
    try:
        if not ALLOW_DOWNLOAD:
            raise OSError("downloads disabled")
        from torchvision.datasets import FashionMNIST

        for train in (True, False):
            FashionMNIST(str(FASHION_DOWNLOAD_ROOT), train=train, download=True)
        if (downloaded / "train-images-idx3-ubyte.gz").is_file():
            return downloaded
    except Exception:  # no internet, or the mirror is down: fall through to the install hint
        pass
    raise FileNotFoundError(
        "Fashion-MNIST not found in "
        + ", ".join(str(d) for d in FASHION_MNIST_DIRS)
        + " and could not be downloaded; install it with `apt-get install dataset-fashion-mnist`"
    )


@lru_cache(maxsize=2)
def _fashion_raw() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d = _fashion_dir()
    return (
        _read_idx(d / "train-images-idx3-ubyte.gz"),
        _read_idx(d / "train-labels-idx1-ubyte.gz").astype(np.int64),
        _read_idx(d / "t10k-images-idx3-ubyte.gz"),
        _read_idx(d / "t10k-labels-idx1-ubyte.gz").astype(np.int64),
    )


def _fashion_mnist(split: str, seed: int):
    train_x, train_y, test_x, test_y = _fashion_raw()
    if split == "test":  # held-out images come from the official test set
        idx = _partition(len(test_y), (0, 0, FASHION_SIZES["test"]), seed, 11)["test"]
        return test_x[idx].copy(), test_y[idx].copy(), FASHION_CLASSES
    idx = _partition(len(train_y), (FASHION_SIZES["train"], FASHION_SIZES["validation"], 0), seed, 12)[split]
    return train_x[idx].copy(), train_y[idx].copy(), FASHION_CLASSES


# --------------------------------------------------------------------------- digits

DIGIT_SIZES = (1000, 300, 497)  # scikit-learn ships 1797 images


@lru_cache(maxsize=1)
def _digits_28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (0..16) as 28x28 uint8: bilinear upsampling to 24x24, 2 px border."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = (bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    out = np.zeros((len(small), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, im in enumerate(small):
        out[i, 2:26, 2:26] = np.asarray(Image.fromarray(im, mode="L").resize((24, 24), Image.BILINEAR))
    return out, bunch.target.astype(np.int64)


def _digits(split: str, seed: int):
    x, y = _digits_28()
    idx = _partition(len(y), DIGIT_SIZES, seed, 21)[split]
    return x[idx].copy(), y[idx].copy(), DIGIT_CLASSES


def _rotated_digits(split: str, seed: int):
    # Same partition as `digits`, so no test image of one task is a training image of the other.
    x, y, classes = _digits(split, seed)
    return np.ascontiguousarray(np.rot90(x, k=-1, axes=(1, 2))), y, classes


# --------------------------------------------------------------------------- font letters

LETTER_SIZES = {"train": 3000, "validation": 500, "test": 1000}


@lru_cache(maxsize=1)
def _font_files() -> tuple[str, ...]:
    fonts = sorted(
        str(p) for d in FONT_DIRS if d.is_dir() for p in d.rglob("*.ttf")
        if "math" not in p.name.lower()  # symbol fonts render letters oddly or not at all
    )
    if not fonts:
        raise FileNotFoundError(
            "no TrueType fonts found under " + ", ".join(str(d) for d in FONT_DIRS)
            + "; install them with `apt-get install fonts-dejavu-core fonts-liberation`"
        )
    return tuple(fonts)


@lru_cache(maxsize=512)
def _font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def _render_letter(letter: str, font_path: str, size: int, dx: int, dy: int, angle: float) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = 56  # render at 2x, then downsample for smooth strokes
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    font = _font(font_path, size * 2)
    left, top, right, bottom = draw.textbbox((0, 0), letter, font=font)
    x = (canvas - (right - left)) / 2 - left + 2 * dx
    y = (canvas - (bottom - top)) / 2 - top + 2 * dy
    draw.text((x, y), letter, fill=255, font=font)
    img = img.rotate(angle, resample=Image.BILINEAR)
    return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))


def _font_letters(split: str, seed: int):
    fonts = _font_files()
    n = LETTER_SIZES[split]
    rng = np.random.default_rng([seed, 31, SPLITS.index(split)])
    labels = np.arange(n, dtype=np.int64) % len(LETTER_CLASSES)
    rng.shuffle(labels)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    font_idx = rng.integers(0, len(fonts), size=n)
    sizes = rng.integers(14, 23, size=n)
    offsets = rng.integers(-3, 4, size=(n, 2))
    angles = rng.uniform(-20.0, 20.0, size=n)
    for i in range(n):
        images[i] = _render_letter(
            LETTER_CLASSES[labels[i]], fonts[font_idx[i]], int(sizes[i]),
            int(offsets[i, 0]), int(offsets[i, 1]), float(angles[i]),
        )
    return images, labels, LETTER_CLASSES


_LOADERS = {
    "fashion_mnist": _fashion_mnist,
    "digits": _digits,
    "rotated_digits": _rotated_digits,
    "font_letters": _font_letters,
}
