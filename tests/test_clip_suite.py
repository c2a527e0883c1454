import math

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.suites import clip as clip_suite
from explorer.suites import datasets

CLASSES = ("cat", "dog", "red_car")


@pytest.fixture(scope="module")
def vit_b32():
    import open_clip

    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32").eval()  # random init: no download


def make_folder(root, classes=CLASSES, per_class=2, size=40, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_vit_b32_on_image_folder(vit_b32, tmp_path):
    make_folder(tmp_path / "pets")
    acc = clip_suite.evaluate(vit_b32, dataset="pets", spec_dir=tmp_path, batch_size=4)
    assert 0.0 <= acc <= 1.0 and acc * 6 == pytest.approx(round(acc * 6))
    loss = clip_suite.evaluate(vit_b32, dataset=str(tmp_path / "pets"), metric="loss")
    assert math.isfinite(loss) and loss > 0
    data = clip_suite.eval_data(vit_b32, dataset="pets", spec_dir=tmp_path)
    assert data.images.shape == (6, 3, 224, 224)
    assert data.classnames == ("cat", "dog", "red car")  # folder names, underscores -> spaces
    # cached: the second call reuses decoded tensors and the head
    assert clip_suite.eval_data(vit_b32, dataset="pets", spec_dir=tmp_path) is data


def test_head_follows_the_template_averaging_formula(vit_b32):
    import open_clip
    import torch.nn.functional as F

    templates = ("a photo of a {}.", "a drawing of a {}.")
    head = clip_suite.zero_shot_head(vit_b32, ["cat", "dog"], templates)
    assert clip_suite.zero_shot_head(vit_b32, ["cat", "dog"], templates) is head
    with torch.no_grad():
        e = F.normalize(vit_b32.encode_text(open_clip.tokenize([t.format("dog") for t in templates])), dim=-1)
    assert torch.allclose(head[1], F.normalize(e.mean(0), dim=-1), atol=1e-5)
    assert torch.allclose(head.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_split_folders_and_classname_file(vit_b32, tmp_path):
    make_folder(tmp_path / "ds" / "val")
    make_folder(tmp_path / "ds" / "test", per_class=1)
    (tmp_path / "names.txt").write_text("kitten\npuppy\nautomobile\n")
    data = clip_suite.eval_data(vit_b32, dataset="ds", split="validation", classnames="names.txt", spec_dir=tmp_path)
    assert len(data.labels) == 6 and data.classnames == ("kitten", "puppy", "automobile")
    assert len(clip_suite.eval_data(vit_b32, dataset="ds", split="test", spec_dir=tmp_path).labels) == 3
    with pytest.raises(FileNotFoundError, match="none for split 'train'"):
        clip_suite.evaluate(vit_b32, dataset="ds", split="train", spec_dir=tmp_path)


def test_fingerprint_changes_with_data(tmp_path):
    root = make_folder(tmp_path / "pets")
    fp = clip_suite.evaluate.fingerprint(dataset="pets", spec_dir=tmp_path)
    assert fp == clip_suite.evaluate.fingerprint(dataset="pets", spec_dir=tmp_path, metric="loss")
    Image.new("RGB", (8, 8)).save(root / "cat" / "extra.png")
    assert clip_suite.evaluate.fingerprint(dataset="pets", spec_dir=tmp_path) != fp
    builtin = clip_suite.evaluate.fingerprint(dataset="digits", split="test")
    assert builtin != clip_suite.evaluate.fingerprint(dataset="digits", split="validation")
    assert datasets.DATA_VERSION in builtin


def test_bad_inputs_name_the_culprit(vit_b32, tmp_path):
    with pytest.raises(FileNotFoundError, match="'nowhere' is neither a built-in .* nor an existing ImageFolder"):
        clip_suite.evaluate(vit_b32, dataset="nowhere", spec_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a built-in \\(fashion_mnist"):
        clip_suite.evaluate(vit_b32, dataset="fashion")
    make_folder(tmp_path / "pets")
    with pytest.raises(ValueError, match="2 class names given but dataset folder .* has 3 class folders"):
        clip_suite.evaluate(vit_b32, dataset="pets", classnames=["cat", "dog"], spec_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        clip_suite.evaluate(vit_b32, dataset="pets", metric="f1", spec_dir=tmp_path)
    with pytest.raises(ValueError, match="template 'a photo' has no"):
        clip_suite.evaluate(vit_b32, dataset="pets", templates=["a photo"], spec_dir=tmp_path)


def test_undecodable_images_are_skipped_with_a_count(vit_b32, tmp_path):
    root = make_folder(tmp_path / "pets")
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "cat" / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 2 of 8 images"):
        data = clip_suite.eval_data(vit_b32, dataset="pets", spec_dir=tmp_path)
    assert len(data.labels) == 6


def test_shape_mismatch_names_first_bad_tensor():
    shapes = clip_suite.expected_shapes("ViT-B-32")
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    clip_suite.check_state_dict("ViT-B-32", sd)  # matches
    sd["visual.conv1.weight"] = torch.empty(768, 3, 16, 16, device="meta")
    with pytest.raises(ValueError, match=r"checkpoint b16.pt has tensor 'visual.conv1.weight' of shape "
                                         r"\(768, 3, 16, 16\); architecture 'ViT-B-32' expects \(768, 3, 32, 32\)"):
        clip_suite.check_state_dict("ViT-B-32", sd, checkpoint="b16.pt")
    del sd["visual.conv1.weight"]
    with pytest.raises(ValueError, match="lacks tensor 'visual.conv1.weight'"):
        clip_suite.check_state_dict("ViT-B-32", sd)
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-Q-99'"):
        clip_suite.check_state_dict("ViT-Q-99", sd)


def test_builtin_fast_path_equals_open_clip_transform():
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg

    cfg = asdict(PreprocessCfg(size=28))
    images = datasets.load("digits", "test", subsample=8).images
    fast = clip_suite.arrays_to_tensor(images, cfg)
    slow = clip_suite._transform_pils(datasets.to_pil(images), cfg)
    assert torch.allclose(fast, slow, atol=1e-5)
