"""The large-model merger (explorer/streaming.py): exact against float64, both memory modes, TIES/DARE
like the classic path, and memory that matches the mode."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from explorer.merging.safetensors_file import SafetensorsCheckpoint
from explorer.merging.streaming import RESERVE_BYTES, StreamingMerger, choose_mode
from tests import llm_models
from tests.llm_models import one_thread  # noqa: F401 (autouse fixture)

COEFFICIENTS = [np.array([0.3, 0.55]), np.array([-0.4, 1.7]), np.array([1.0, 1.0])]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """Base and two experts trained in float32 and saved in float32, sharded."""
    return llm_models.cached_build(tmp_path_factory, "fp32", dtype=torch.float32)


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    return llm_models.cached_build(tmp_path_factory)


def _state(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _merger(folders, mode: str, chunk: int = 1000, method: str = "task_arithmetic", **kw):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folders["base"]), local_files_only=True, dtype="auto")
    base = SafetensorsCheckpoint(folders["base"])
    experts = [SafetensorsCheckpoint(folders[s]) for s in ("upper", "reverse")]
    keys = [k for k, e in base.entries.items() if e.dtype.is_floating_point]
    messages = []
    merger = StreamingMerger(model, base, experts, keys, method=method, mode=mode, chunk=chunk,
                             log=messages.append, **kw)
    return model, merger, messages


@pytest.mark.parametrize("mode", ["resident", "streaming"])
def test_merge_matches_a_float64_reference(fp32, mode):
    model, merger, messages = _merger(fp32, mode)
    assert messages and messages[0].startswith(f"merge memory: {mode}")
    base, up, rev = (_state(fp32[n]) for n in ("base", "upper", "reverse"))
    for c in COEFFICIENTS:  # chunks of 1000 elements: every tensor crosses chunk boundaries
        merger.apply(c)
        state = model.state_dict()
        for k, b in base.items():
            ref = b.double() + c[0] * (up[k].double() - b.double()) + c[1] * (rev[k].double() - b.double())
            err = float((state[k].double() - ref).abs().max())
            assert err <= 1e-6 * max(1.0, float(ref.abs().max())), (k, c, err)
    for i, expert in enumerate((up, rev)):  # each expert alone, and the base, bit for bit
        merger.apply(np.eye(2)[i])
        assert all(torch.equal(model.state_dict()[k], v) for k, v in expert.items())
    merger.apply(np.zeros(2))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.items())


@pytest.mark.parametrize("mode", ["resident", "streaming"])
def test_pieces_shared_by_threads_give_the_same_bits_as_one_thread(bf16, mode, monkeypatch):
    """CPU merges split each chunk into cache-sized pieces that several threads take in turn: the
    merged model must not depend on how many threads there are or who took which piece."""
    import explorer.merging.streaming as streaming

    monkeypatch.setattr(streaming, "CACHE_CHUNK", 96)  # many pieces per chunk, a short last one
    c = COEFFICIENTS[1]
    states = {}
    for workers in (1, 3):
        model, merger, _ = _merger(bf16, mode, chunk=1000, workers=workers)
        assert merger.workers == workers
        merger.apply(c)
        states[workers] = {k: v.clone() for k, v in model.state_dict().items()}
        merger.close()
    base, up, rev = (_state(bf16[n]) for n in ("base", "upper", "reverse"))
    for k, b in base.items():
        assert torch.equal(states[1][k], states[3][k]), k
        ref = b.double() + c[0] * (up[k].double() - b.double()) + c[1] * (rev[k].double() - b.double())
        assert torch.all((states[3][k].double() - ref).abs() <= ref.abs() * 2.0 ** -8 + 1e-30), k


def test_bf16_merge_is_the_float64_merge_rounded_once(bf16):
    model, merger, _ = _merger(bf16, "streaming")
    base, up, rev = (_state(bf16[n]) for n in ("base", "upper", "reverse"))
    c = COEFFICIENTS[0]
    merger.apply(c)
    for k, b in base.items():
        ref = b.double() + c[0] * (up[k].double() - b.double()) + c[1] * (rev[k].double() - b.double())
        got = model.state_dict()[k]
        assert got.dtype == torch.bfloat16
        # within one bf16 rounding of the exact value (half an ulp, plus float32 slack)
        assert torch.all((got.double() - ref).abs() <= ref.abs() * 2.0 ** -8 + 1e-30), k


@pytest.mark.parametrize("method", ["ties", "dare"])
def test_ties_and_dare_merge_like_the_classic_path(fp32, method):
    from explorer.merging.inplace import Merger
    from explorer.merging.task_vectors import compute_task_vectors

    model, merger, _ = _merger(fp32, "streaming", method=method, density=0.3, seed=5)
    base, up, rev = (_state(fp32[n]) for n in ("base", "upper", "reverse"))
    vectors = compute_task_vectors(base, [up, rev], {"method": method, "density": 0.3, "seed": 5})
    classic = Merger({k: v.clone() for k, v in base.items()}, base, vectors)
    c = COEFFICIENTS[0]
    merger.apply(c)
    expected = classic.merged_state_dict(c, base)
    for k in base:
        assert torch.allclose(model.state_dict()[k], expected[k], atol=1e-6, rtol=1e-6), k


def test_modes_are_chosen_from_free_memory():
    gb = 1 << 30
    assert choose_mode(6 * gb, 20 * gb) == "resident"
    assert choose_mode(6 * gb, 6 * gb + RESERVE_BYTES) == "streaming"  # no room left for evaluation
    assert choose_mode(6 * gb, 100 * gb, "streaming") == "streaming"
    with pytest.raises(Exception, match="not one of"):
        choose_mode(1, 1, "swap")


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_resident_holds_the_experts_and_streaming_does_not(tmp_path):
    """Memory the process really holds: resident grows by the experts' bytes, streaming by a few chunks."""
    from explorer.demo.llm_zoo import char_tokenizer, save_folder, tiny_llama

    tok = char_tokenizer()
    model = tiny_llama(len(tok), hidden=256, layers=4, heads=4, intermediate=1024, dtype=torch.bfloat16)
    folders = {"base": save_folder(model, tok, tmp_path / "base")}
    gen = torch.Generator().manual_seed(0)
    for name in ("upper", "reverse"):
        state = {k: (v.float() + 0.01 * torch.randn(v.shape, generator=gen)).to(v.dtype)
                 for k, v in model.state_dict().items()}
        (tmp_path / name).mkdir()
        save_file(state, str(tmp_path / name / "model.safetensors"), metadata={"format": "pt"})
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            (tmp_path / name / f).write_bytes((tmp_path / "base" / f).read_bytes())
        folders[name] = tmp_path / name
    expert_bytes = 2 * sum(v.numel() * v.element_size() for v in model.state_dict().values())
    del model
    grown = {}
    for mode in ("streaming", "resident"):
        before = _rss()
        target, merger, _ = _merger(folders, mode, chunk=1 << 14)
        merger.apply(COEFFICIENTS[0])
        merger.apply(COEFFICIENTS[1])
        grown[mode] = _rss() - before - sum(v.numel() * v.element_size() for v in target.state_dict().values())
        assert (merger.resident is not None) == (mode == "resident")
        del target, merger
    assert grown["resident"] >= 0.8 * expert_bytes, grown
    assert grown["streaming"] <= 0.25 * expert_bytes, grown


@pytest.mark.parametrize("mode", ["resident", "streaming"])
def test_fused_kernel_merges_like_the_piece_by_piece_path(bf16, mode):
    """Large models merge with one compiled kernel per chunk (explorer.streaming.FUSED_FROM): the same
    float64 bound as the default path (one bf16 rounding of the exact merge), at most one bf16 step
    from it, and each expert alone bit for bit. Forced on here for a tiny model."""
    base, up, rev = (_state(bf16[n]) for n in ("base", "upper", "reverse"))
    plain, merger_plain, _ = _merger(bf16, mode, fused=False)
    fused, merger, messages = _merger(bf16, mode, fused=True)
    if not merger.fused:  # a machine without a C++ compiler merges piece by piece, and says so
        assert "not compiled" in messages[-1]
        pytest.skip(messages[-1])
    assert not merger_plain.fused and messages[-1].startswith("merge kernel: fused")
    for c in (*COEFFICIENTS, np.array([0.0, 0.8])):  # also a zero coefficient: that expert is not read
        merger.apply(c)
        merger_plain.apply(c)
        got, want = fused.state_dict(), plain.state_dict()
        for k, b in base.items():
            ref = b.double() + c[0] * (up[k].double() - b.double()) + c[1] * (rev[k].double() - b.double())
            # float32 rounding of the terms: matters only where they cancel (an exact 0 for some entries here)
            terms = ((1 - c.sum()) * b.double()).abs() + sum(ci * x[k].double().abs() for ci, x in zip(np.abs(c), (up, rev)))
            slack = 2.0 ** -22 * terms
            assert torch.all((got[k].double() - ref).abs() <= ref.abs() * 2.0 ** -8 + slack), (k, c)
            # where the two float32 sums differ in their last bit, bf16 may round them to neighbours
            assert torch.all((got[k].double() - want[k].double()).abs() <= ref.abs() * 2.0 ** -7 + 2 * slack), (k, c)
    for i, expert in enumerate((up, rev)):
        merger.apply(np.eye(2)[i])
        assert all(torch.equal(fused.state_dict()[k], v) for k, v in expert.items())
    exported = dict(merger.iter_merged(COEFFICIENTS[0]))  # exports run the same kernel as the model
    merger.apply(COEFFICIENTS[0])
    assert all(torch.equal(fused.state_dict()[k], v) for k, v in exported.items() if k in merger.keys)
