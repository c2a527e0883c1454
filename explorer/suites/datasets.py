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

Four more for the 8-task demo, each a different kind of image (as the standard 8 CLIP tasks are):

- ``inverted_fashion``: the Fashion-MNIST images as negatives (dark garment on a light ground),
  same partition and class names as ``fashion_mnist``: the same labels under a different view.
- ``font_digits``: SVHN-style printed digits 0-9 rendered from the installed fonts, same class
  names as ``digits`` (evidence that agrees with handwritten digits and conflicts with rotated ones).
- ``shapes``: procedurally drawn filled shapes (circle, star, heart, ...), seeded size, position,
  rotation and brightness.
- ``textures``: procedurally generated DTD-style textures (stripes, checkerboard, dots, ...),
  seeded period, phase, orientation jitter, contrast and noise.
"""

from __future__ import annotations

import gzip
import hashlib
import math
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
SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "hexagon", "heart", "arrow", "crescent", "ring")
TEXTURE_CLASSES = (
    "horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard", "polka dots",
    "grid", "zigzag", "concentric circles", "speckles", "bricks",
)

#: Prompt templates per built-in (the class name is formatted into ``{}``).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("a photo of a {}.", "a photo of the {}, a type of clothing.", "a grayscale photo of a {}."),
    "digits": ("a photo of the digit {}.", "a handwritten {}.", "the number {}."),
    "rotated_digits": ("a rotated photo of the digit {}.", "a handwritten {}, turned sideways.", "the number {} on its side."),
    "font_letters": ("a photo of the letter {}.", "the letter {} in a font.", "a typed {}."),
    "inverted_fashion": ("a negative photo of a {}.", "a dark {} on a white background.", "an inverted photo of the {}."),
    "font_digits": ("a printed digit {}.", "the number {} in a font.", "a typed {}."),
    "shapes": ("a drawing of a {}.", "a {} shape.", "a white {} on black."),
    "textures": ("a photo of a {} texture.", "a {} pattern.", "a surface with {}."),
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
#: Split sizes of the rendered and procedurally drawn built-ins (each split drawn from its own seeded stream).
GENERATED_SIZES = {"train": 3000, "validation": 500, "test": 1000}


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


def _font_glyphs(glyphs: str, n: int, rng: np.random.Generator, max_angle: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` balanced, shuffled renderings of ``glyphs`` with seeded font, size, offset and rotation."""
    fonts = _font_files()
    labels = np.arange(n, dtype=np.int64) % len(glyphs)
    rng.shuffle(labels)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    font_idx = rng.integers(0, len(fonts), size=n)
    sizes = rng.integers(14, 23, size=n)
    offsets = rng.integers(-3, 4, size=(n, 2))
    angles = rng.uniform(-max_angle, max_angle, size=n)
    for i in range(n):
        images[i] = _render_letter(
            glyphs[labels[i]], fonts[font_idx[i]], int(sizes[i]),
            int(offsets[i, 0]), int(offsets[i, 1]), float(angles[i]),
        )
    return images, labels


def _font_letters(split: str, seed: int):
    rng = np.random.default_rng([seed, 31, SPLITS.index(split)])
    images, labels = _font_glyphs("".join(LETTER_CLASSES), LETTER_SIZES[split], rng, max_angle=20.0)
    return images, labels, LETTER_CLASSES


def _font_digits(split: str, seed: int):
    rng = np.random.default_rng([seed, 41, SPLITS.index(split)])
    images, labels = _font_glyphs("0123456789", GENERATED_SIZES[split], rng, max_angle=15.0)
    return images, labels, DIGIT_CLASSES


# --------------------------------------------------------------------------- inverted Fashion-MNIST


def _inverted_fashion(split: str, seed: int):
    # Same partition as `fashion_mnist`: a test image of one task is never a training image of the other.
    x, y, classes = _fashion_mnist(split, seed)
    return 255 - x, y, classes


# --------------------------------------------------------------------------- procedural shapes


def _shape_outline(kind: str, r: float) -> list[tuple[float, float]]:
    """Polygon vertices (centred at 0, unrotated, radius ~r) of the polygonal shape classes."""
    def regular(n, radius, start=-math.pi / 2):
        return [(radius * math.cos(start + 2 * math.pi * k / n), radius * math.sin(start + 2 * math.pi * k / n))
                for k in range(n)]

    if kind == "square":
        return regular(4, 1.05 * r, math.pi / 4)
    if kind == "triangle":
        return regular(3, 1.15 * r)
    if kind == "hexagon":
        return regular(6, r)
    if kind == "star":
        outer, inner = regular(5, 1.1 * r), regular(5, 0.45 * r, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if kind == "cross":
        a, w = r, 0.32 * r
        return [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
    if kind == "arrow":
        return [(-r, -0.22 * r), (0.1 * r, -0.22 * r), (0.1 * r, -0.65 * r), (r, 0.0),
                (0.1 * r, 0.65 * r), (0.1 * r, 0.22 * r), (-r, 0.22 * r)]
    if kind == "heart":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - 2.5
        return [(float(a) * r / 16, float(b) * r / 16) for a, b in zip(x, y)]
    raise ValueError(kind)


def _draw_shape(kind: str, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = 2 * IMAGE_SIZE  # draw at 2x, then downsample for smooth edges
    cx, cy = canvas / 2 + rng.uniform(-6, 6, size=2)
    r = rng.uniform(14, 22)
    angle = rng.uniform(0, 2 * math.pi)
    fg, bg = int(rng.integers(150, 256)), int(rng.integers(0, 50))
    img = Image.new("L", (canvas, canvas), bg)
    draw = ImageDraw.Draw(img)

    def disc(x, y, radius, fill):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)

    if kind == "circle":
        disc(cx, cy, r, fg)
    elif kind == "ring":
        disc(cx, cy, r, fg)
        disc(cx, cy, rng.uniform(0.45, 0.65) * r, bg)
    elif kind == "crescent":
        disc(cx, cy, r, fg)
        shift = rng.uniform(0.35, 0.6) * r
        disc(cx + shift * math.cos(angle), cy + shift * math.sin(angle), 0.9 * r, bg)
    else:
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + c * x - s * y, cy + s * x + c * y) for x, y in _shape_outline(kind, r)], fill=fg)
    small = np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), dtype=np.float32)
    return np.clip(small + rng.normal(0, 8, size=small.shape), 0, 255).astype(np.uint8)


def _balanced_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.arange(n, dtype=np.int64) % classes
    rng.shuffle(labels)
    return labels


def _shapes(split: str, seed: int):
    rng = np.random.default_rng([seed, 51, SPLITS.index(split)])
    labels = _balanced_labels(GENERATED_SIZES[split], len(SHAPE_CLASSES), rng)
    images = np.stack([_draw_shape(SHAPE_CLASSES[c], rng) for c in labels])
    return images, labels, SHAPE_CLASSES


# --------------------------------------------------------------------------- procedural textures


def _band(t: np.ndarray) -> np.ndarray:
    """A soft square wave of period 1 in [0, 1] (anti-aliased stripes)."""
    return np.clip(0.5 + 2.0 * np.sin(2 * math.pi * t), 0.0, 1.0)


def _near(t: np.ndarray, period: float) -> np.ndarray:
    """Distance from t to the nearest multiple of ``period``."""
    return np.abs(np.mod(t + period / 2, period) - period / 2)


def _texture(kind: str, rng: np.random.Generator) -> np.ndarray:
    period = rng.uniform(5.0, 9.0)
    theta = math.radians(rng.uniform(-10.0, 10.0))
    ox, oy = rng.uniform(0, 2 * period, size=2)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    u = math.cos(theta) * xx + math.sin(theta) * yy + ox
    v = -math.sin(theta) * xx + math.cos(theta) * yy + oy
    width = rng.uniform(0.7, 1.3)  # half-width of drawn lines, pixels
    if kind == "horizontal stripes":
        f = _band(v / period)
    elif kind == "vertical stripes":
        f = _band(u / period)
    elif kind == "diagonal stripes":
        f = _band((u + rng.choice([-1.0, 1.0]) * v) / (math.sqrt(2) * period))
    elif kind == "checkerboard":
        f = np.clip(0.5 + 2.0 * np.sin(math.pi * u / period) * np.sin(math.pi * v / period), 0.0, 1.0)
    elif kind == "polka dots":
        radius = rng.uniform(0.2, 0.32) * period
        f = np.clip(radius + 0.5 - np.hypot(_near(u, period), _near(v, period)), 0.0, 1.0)
    elif kind == "grid":
        f = np.clip(width + 0.5 - np.minimum(_near(u, period), _near(v, period)), 0.0, 1.0)
    elif kind == "zigzag":
        wavelength = rng.uniform(0.8, 1.2) * period
        tri = 2 * np.abs(2 * np.mod(u / wavelength, 1.0) - 1) - 1
        f = _band((v + rng.uniform(0.3, 0.5) * period * tri) / period)
    elif kind == "concentric circles":
        cx, cy = IMAGE_SIZE / 2 + rng.uniform(-6, 6, size=2)
        f = _band(np.hypot(xx - cx, yy - cy) / period + rng.uniform(0, 1))
    elif kind == "speckles":
        f = (rng.random((IMAGE_SIZE, IMAGE_SIZE)) < rng.uniform(0.12, 0.3)).astype(np.float64)
    elif kind == "bricks":
        row = np.floor(v / period)
        joints = _near(u + np.mod(row, 2) * period, 2 * period)
        f = np.clip(width + 0.5 - np.minimum(_near(v, period), joints), 0.0, 1.0)
    else:
        raise ValueError(kind)
    fg, bg = rng.uniform(150, 255), rng.uniform(0, 60)
    image = bg + (fg - bg) * f + rng.normal(0, 10, size=f.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _textures(split: str, seed: int):
    rng = np.random.default_rng([seed, 61, SPLITS.index(split)])
    labels = _balanced_labels(GENERATED_SIZES[split], len(TEXTURE_CLASSES), rng)
    images = np.stack([_texture(TEXTURE_CLASSES[c], rng) for c in labels])
    return images, labels, TEXTURE_CLASSES


_LOADERS = {
    "fashion_mnist": _fashion_mnist,
    "digits": _digits,
    "rotated_digits": _rotated_digits,
    "font_letters": _font_letters,
    "inverted_fashion": _inverted_fashion,
    "font_digits": _font_digits,
    "shapes": _shapes,
    "textures": _textures,
}
