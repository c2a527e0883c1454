"""Every supported checkpoint format loads to the same tensors; unsafe or broken files are refused."""
import json

import pytest
import torch
from safetensors.torch import save_file

from explorer.errors import CheckpointError
from explorer.merging.checkpoints import check_compatible, content_hash, load_state_dict


@pytest.fixture
def state():
    torch.manual_seed(0)
    return {"a.weight": torch.randn(4, 3), "a.bias": torch.randn(4), "pos_ids": torch.arange(5)}


def same(x, y):
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_all_formats_load_identically(tmp_path, state):
    save_file(state, str(tmp_path / "single.safetensors"))
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "openclip.pt")
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({"a.weight": state["a.weight"]}, str(hf / "model-00001-of-00002.safetensors"))
    save_file({"a.bias": state["a.bias"], "pos_ids": state["pos_ids"]}, str(hf / "model-00002-of-00002.safetensors"))
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "a.bias": "model-00002-of-00002.safetensors",
        "pos_ids": "model-00002-of-00002.safetensors"}}))
    hf_bin = tmp_path / "hf_bin"
    hf_bin.mkdir()
    torch.save(state, hf_bin / "pytorch_model.bin")
    for p in ["single.safetensors", "plain.pt", "openclip.pt", "hf", "hf/model.safetensors.index.json", "hf_bin"]:
        assert same(load_state_dict(tmp_path / p), state), p


def test_pickled_module_is_refused_with_conversion_hint(tmp_path):
    torch.save(torch.nn.Linear(3, 2), tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match="pickled module.*convert.*--trust-pickle"):
        load_state_dict(tmp_path / "module.pt")
    assert set(load_state_dict(tmp_path / "module.pt", trust_pickle=True)) == {"weight", "bias"}


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.safetensors: checkpoint file not found"):
        load_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors: unreadable"):
        load_state_dict(tmp_path / "bad.safetensors")


def test_shape_mismatch_names_tensor_and_both_shapes(state):
    other = dict(state, **{"a.weight": torch.zeros(5, 3)})
    with pytest.raises(CheckpointError, match=r"tensor 'a.weight' has shape \(5, 3\); base base.pt has \(4, 3\)"):
        check_compatible(state, other, "ft.pt", "base.pt")


def test_content_hash_follows_bytes_not_names(tmp_path, state):
    save_file(state, str(tmp_path / "x.safetensors"))
    save_file(state, str(tmp_path / "y.safetensors"))
    cache = {}
    assert content_hash(tmp_path / "x.safetensors", cache) == content_hash(tmp_path / "y.safetensors", cache)
    save_file(dict(state, **{"a.bias": state["a.bias"] + 1}), str(tmp_path / "z.safetensors"))
    assert content_hash(tmp_path / "z.safetensors") != content_hash(tmp_path / "x.safetensors")
