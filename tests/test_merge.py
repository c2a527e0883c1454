"""The in-place merge on a real open_clip architecture, against a float64 reference."""
import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from explorer.experiment.families.registry import build_model
from explorer.merging.checkpoints import load_state_dict
from explorer.merging.inplace import Merger
from explorer.merging.task_vectors import compute_task_vectors


@pytest.fixture(scope="module")
def vit_b32(tmp_path_factory):
    """A random-init ViT-B-32 saved to disk, plus two per-task perturbations of its image tower."""
    d = tmp_path_factory.mktemp("vitb32")
    torch.manual_seed(0)
    base = {k: v.contiguous() for k, v in open_clip.create_model("ViT-B-32").state_dict().items()}
    base["visual.int_buffer"] = torch.arange(4)  # a non-floating tensor must be skipped
    save_file(base, str(d / "base.safetensors"))
    paths = []
    for i in range(2):
        g = torch.Generator().manual_seed(i + 1)
        ft = {k: (v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() and k.startswith("visual.") else v)
              for k, v in base.items()}
        paths.append(d / (f"task{i}.pt" if i == 0 else f"task{i}.safetensors"))
        torch.save(ft, paths[-1]) if i == 0 else save_file(ft, str(paths[-1]))
    return d / "base.safetensors", paths


def test_merge_in_place_matches_float64_reference(vit_b32):
    base_path, task_paths = vit_b32
    base = load_state_dict(base_path)
    finetuned = [load_state_dict(p) for p in task_paths]
    tv = compute_task_vectors(base, finetuned, prefix="visual.")
    assert "visual.int_buffer" not in tv.keys and all(k.startswith("visual.") for k in tv.keys)
    clean = {k: v for k, v in base.items() if k != "visual.int_buffer"}
    model = build_model("open_clip", clean, str(base_path), "ViT-B-32")
    merger = Merger(model, base, tv)
    proj = model.visual.proj
    ptr = proj.data_ptr()
    for c in ([0.3, 0.5], [1.0, 0.0], [-0.4, 1.3]):
        merger.apply(np.array(c))
        state = model.state_dict()
        for key in ("visual.proj", "visual.conv1.weight", "visual.transformer.resblocks.5.mlp.c_fc.bias"):
            ref = base[key].double() + sum(ci * (ft[key].double() - base[key].double()) for ci, ft in zip(c, finetuned))
            assert torch.allclose(state[key].double(), ref, atol=1e-5), key
        assert torch.equal(state["text_projection"], base["text_projection"])  # text tower untouched
    assert model.visual.proj.data_ptr() == ptr  # written in place, no re-allocation
    merger.apply(np.array([0.0, 1.0]))
    assert torch.allclose(model.state_dict()["visual.proj"], finetuned[1]["visual.proj"], atol=1e-6)


def test_ties_and_dare_preprocessing():
    torch.manual_seed(0)
    base = {"w": torch.zeros(1000)}
    fts = [{"w": torch.randn(1000)}, {"w": torch.randn(1000)}]
    ties = compute_task_vectors(base, fts, {"method": "ties", "density": 0.2}).vectors["w"]
    assert ((ties != 0).sum(dim=1) <= 200).all()  # trimmed to the top 20 % per task
    both = (ties[0] != 0) & (ties[1] != 0)
    assert (torch.sign(ties[0][both]) == torch.sign(ties[1][both])).all()  # one elected sign
    dare = compute_task_vectors(base, fts, {"method": "dare", "density": 0.5, "seed": 3}).vectors["w"]
    kept = dare[0] != 0
    assert 400 < int(kept.sum()) < 600
    assert torch.allclose(dare[0][kept], fts[0]["w"][kept] * 2)  # survivors rescaled by 1/density
    again = compute_task_vectors(base, fts, {"method": "dare", "density": 0.5, "seed": 3}).vectors["w"]
    assert torch.equal(dare, again)  # seeded
