import numpy as np
import pytest

from explorer.suites import datasets


@pytest.mark.parametrize("name", datasets.names())
def test_splits_have_images_labels_and_classnames(name):
    for split in datasets.SPLITS:
        data = datasets.load(name, split)
        assert data.images.dtype == np.uint8 and data.images.shape[1:] == (28, 28)
        assert data.labels.dtype == np.int64 and len(data.labels) == len(data.images) > 0
        assert len(data.classnames) == 10 and set(np.unique(data.labels)) == set(range(10))
        assert data.images.max() > 100  # something is drawn
        assert all("{}" in t for t in data.templates)


@pytest.mark.parametrize("name", datasets.names())
def test_same_seed_same_data_other_seed_other_partition(name):
    a = datasets.load(name, "validation", seed=0)
    b = datasets.load(name, "validation", seed=0)
    c = datasets.load(name, "validation", seed=1)
    assert datasets.content_hash(a) == datasets.content_hash(b)
    assert datasets.content_hash(a) != datasets.content_hash(c)


def test_partition_is_disjoint_and_seeded():
    parts = datasets._partition(100, (50, 20, 30), seed=3, salt=1)
    assert sum(len(p) for p in parts.values()) == len(set(np.concatenate(list(parts.values())))) == 100
    again = datasets._partition(100, (50, 20, 30), seed=3, salt=1)
    assert all(np.array_equal(parts[s], again[s]) for s in datasets.SPLITS)


def test_rotated_digits_are_quarter_turns_of_digits():
    upright = datasets.load("digits", "test")
    rotated = datasets.load("rotated_digits", "test")
    assert np.array_equal(rotated.labels, upright.labels)
    assert np.array_equal(rotated.images, np.rot90(upright.images, k=-1, axes=(1, 2)))


def test_subsample_is_seeded_subset():
    full = datasets.load("digits", "validation")
    sub = datasets.load("digits", "validation", subsample=50, seed=0)
    assert len(sub) == 50
    assert datasets.content_hash(sub) == datasets.content_hash(datasets.load("digits", "validation", subsample=50))
    rows = {im.tobytes() for im in full.images}
    assert all(im.tobytes() in rows for im in sub.images)


def test_to_pil_gives_rgb_images():
    ims = datasets.to_pil(datasets.load("font_letters", "test", subsample=3).images)
    assert [im.mode for im in ims] == ["RGB"] * 3 and ims[0].size == (28, 28)


def test_unknown_name_and_split_are_named():
    with pytest.raises(ValueError, match="unknown built-in dataset 'mnist'.*fashion_mnist"):
        datasets.load("mnist")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        datasets.load("digits", "val")


def test_missing_fashion_mnist_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIRS", (tmp_path,))
    monkeypatch.setattr(datasets, "FASHION_DOWNLOAD_ROOT", tmp_path / "downloads")
    monkeypatch.setattr(datasets, "ALLOW_DOWNLOAD", False)  # this machine has no internet anyway
    datasets._fashion_raw.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
            datasets.load("fashion_mnist", "test")
    finally:
        datasets._fashion_raw.cache_clear()


def test_inverted_fashion_is_the_negative_of_fashion_mnist():
    upright = datasets.load("fashion_mnist", "test")
    inverted = datasets.load("inverted_fashion", "test")
    assert np.array_equal(inverted.labels, upright.labels) and inverted.classnames == upright.classnames
    assert np.array_equal(inverted.images, 255 - upright.images)


@pytest.mark.parametrize("name", ["font_digits", "shapes", "textures"])
def test_generated_images_show_their_class(name):
    # A 1-nearest-neighbour classifier on raw pixels, trained on the train split, must beat chance
    # (10 %) by far on test images: the label says what is drawn, and train and test do not overlap.
    train, test = datasets.load(name, "train"), datasets.load(name, "test", subsample=300)
    assert not {im.tobytes() for im in test.images} & {im.tobytes() for im in train.images}
    a = train.images.reshape(len(train), -1).astype(np.float32)
    b = test.images.reshape(len(test), -1).astype(np.float32)
    dist = (b * b).sum(1)[:, None] - 2 * b @ a.T + (a * a).sum(1)[None, :]
    accuracy = float((train.labels[dist.argmin(1)] == test.labels).mean())
    assert accuracy > 0.4, (name, accuracy)
    assert np.bincount(train.labels).min() == np.bincount(train.labels).max()  # balanced classes


def test_font_digits_share_class_names_with_handwritten_digits():
    assert datasets.load("font_digits", "test").classnames == datasets.load("digits", "test").classnames
