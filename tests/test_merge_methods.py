"""The data-free merge methods (TSV-M, CART, consensus TALL masks, Iso-C, LiNeS) against float64
references written from their equations with numpy, plus the properties a user relies on."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from explorer.errors import SpecError
from explorer.merging.methods import get_method, method_names

T = 3
TOL = 1e-6
#: worst relative error per check (max |got − want| / max |want|), for the report
MEASURED: dict[str, float] = {}


def _close(name: str, got, want, tol: float = TOL) -> None:
    got = np.asarray(got.detach().cpu() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    err = float(np.max(np.abs(got - want))) / (scale if scale > 0 else 1.0) if want.size else 0.0
    MEASURED[name] = max(MEASURED.get(name, 0.0), err)
    assert err <= tol, f"{name}: relative error {err:.3g} > {tol:g}"


def _stack(shape, seed: int, rank: int | None = None, n_tasks: int = T) -> torch.Tensor:
    """T random task vectors of `shape` (float32); 2-D ones of rank `rank` when given."""
    rng = np.random.default_rng(seed)
    if rank is None:
        x = rng.standard_normal((n_tasks, *shape))
    else:
        m, n = shape
        x = np.stack([rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) for _ in range(n_tasks)])
    return torch.tensor(x, dtype=torch.float32)


def _f64(stack: torch.Tensor) -> list[np.ndarray]:
    return [stack[i].numpy().astype(np.float64) for i in range(stack.shape[0])]


def _polar(a: np.ndarray) -> np.ndarray:
    """The orthogonal polar factor of a: a(aᵀa)^(-1/2) when a has full column rank (by eigh, not by SVD),
    else PQᵀ from numpy's SVD."""
    m, n = a.shape
    if n <= m:
        lam, q = np.linalg.eigh(a.T @ a)
        return a @ (q / np.sqrt(lam)) @ q.T
    p, _, qh = np.linalg.svd(a, full_matrices=False)
    return p @ qh


# ----------------------------------------------------------------------------------------- registration

NEW = ("tsv", "cart", "consensus", "iso_c", "lines")


@pytest.mark.parametrize("name", NEW)
def test_methods_register_with_their_defaults(name):
    method = get_method(name)
    assert method.name == name and name in method_names()
    # every parameter has a default (LiNeS's α and β live in `merge.lines`, read for any method)
    assert set(method.defaults) == set(method.parameters) or (name == "lines" and not method.parameters)
    assert method.mergekit is None
    params = {"method": name, **method.defaults}
    method.check(params)
    text = method.describe(params)
    assert isinstance(text, str) and text and "\n" not in text
    assert method.linear is (name != "iso_c")


def test_defaults_are_the_reference_values():
    assert get_method("cart").defaults == {"rank_ratio": 0.08}
    assert get_method("consensus").defaults == {"min_tasks": 2, "mask_lambda": 0.6}
    assert get_method("lines").defaults == {"alpha": 0.0, "beta": 1.0}
    assert get_method("tsv").parameters == () and get_method("iso_c").parameters == ()


# ------------------------------------------------------------------------------------------------ TSV


def _ref_tsv(taus: list[np.ndarray]):
    """Pieces U⊥ᵢ diag(Sᵢ) V⊥ᵢᵀ, the merged U⊥ŜV⊥ᵀ, U⊥, V⊥ and k, straight from the equations: task i
    keeps kᵢ = min(k, rank τᵢ) triplets (rank at float32 precision, revision 2)."""
    n_tasks = len(taus)
    m, n = taus[0].shape
    k = max(1, min(m, n) // n_tasks)
    svds = [np.linalg.svd(t, full_matrices=False) for t in taus]
    ks = [min(k, int(np.sum(s > s[0] * max(m, n) * 2.0 ** -23))) for _, s, _ in svds]
    u_hat = np.concatenate([u[:, :ki] for (u, _, _), ki in zip(svds, ks)], axis=1)
    v_hat = np.concatenate([vh[:ki].T for (_, _, vh), ki in zip(svds, ks)], axis=1)
    s_hat = np.diag(np.concatenate([s[:ki] for (_, s, _), ki in zip(svds, ks)]))
    u_orth, v_orth = _polar(u_hat), _polar(v_hat)
    offsets = np.cumsum([0, *ks])
    pieces = [u_orth[:, offsets[i]:offsets[i + 1]] @ np.diag(svds[i][1][:ks[i]]) @ v_orth[:, offsets[i]:offsets[i + 1]].T
              for i in range(n_tasks)]
    return pieces, u_orth @ s_hat @ v_orth.T, u_orth, v_orth, k


TSV_CASES = {  # shape, rank of each τᵢ (None: full), seed
    "6x5": ((6, 5), None, 1), "5x7": ((5, 7), None, 2), "12x9": ((12, 9), None, 3),
    "rank4_10x8": ((10, 8), 4, 4),  # rank-deficient τᵢ, rank ≥ k = 2
    "rank2<k_12x9": ((12, 9), 2, 6),  # rank below k = 3: two triplets each, no null-space vectors
    "Tk>m_2x7": ((2, 7), None, 5),  # k = 1, Tk = 3 > m: U⊥ is a partial isometry
}


@pytest.mark.parametrize("case", TSV_CASES)
def test_tsv_matches_reference(case):
    shape, rank, seed = TSV_CASES[case]
    stack = _stack(shape, seed, rank)
    out = get_method("tsv").preprocess(stack, "w", {"method": "tsv"})
    assert out.dtype == torch.float32 and out.shape == stack.shape
    pieces, total, u_orth, v_orth, k = _ref_tsv(_f64(stack))
    for i in range(T):
        _close(f"tsv piece {case}", out[i], pieces[i])
    _close(f"tsv sum {case}", out.sum(0), total)  # Σ pieces = U⊥ŜV⊥ᵀ, the TSV-M merge
    for i in range(T):  # each piece has rank ≤ k
        assert np.linalg.matrix_rank(out[i].double().numpy(), tol=1e-5 * float(out[i].abs().max())) <= k
    if u_orth.shape[1] <= u_orth.shape[0]:  # the stacked left (and right) vectors are orthonormal
        _close(f"tsv U⊥ᵀU⊥ = I {case}", u_orth.T @ u_orth, np.eye(u_orth.shape[1]))
    if v_orth.shape[1] <= v_orth.shape[0]:
        _close(f"tsv V⊥ᵀV⊥ = I {case}", v_orth.T @ v_orth, np.eye(v_orth.shape[1]))


def test_tsv_pieces_are_orthogonal_and_keep_each_tasks_singular_values():
    stack = _stack((12, 9), 7)
    out = get_method("tsv").preprocess(stack, "w", {"method": "tsv"}).double().numpy()
    k = 9 // T
    scale = float(np.abs(out).max()) ** 2
    for i in range(T):
        top = np.linalg.svd(stack[i].double().numpy(), compute_uv=False)[:k]
        _close("tsv piece spectrum = task's top-k", np.linalg.svd(out[i], compute_uv=False)[:k], top)
        for j in range(T):
            if i != j:  # column and row spaces of different tasks' pieces are orthogonal: no interference
                assert np.abs(out[i].T @ out[j]).max() <= 1e-6 * scale
                assert np.abs(out[i] @ out[j].T).max() <= 1e-6 * scale


def test_tsv_orthogonalised_stack_is_orthonormal():
    from explorer.merging.methods.tsv import nearest_orthonormal

    stack = _stack((12, 9), 9).double()
    k = 9 // T
    u_hat = torch.cat([torch.linalg.svd(stack[i], full_matrices=False)[0][:, :k] for i in range(T)], dim=1)
    u_orth = nearest_orthonormal(u_hat).numpy()
    _close("tsv module U⊥ᵀU⊥ = I", u_orth.T @ u_orth, np.eye(T * k))
    _close("tsv module U⊥ = polar(Û)", u_orth, _polar(u_hat.numpy()))


@pytest.mark.parametrize("shape", [(4,), (3, 2, 2)])
def test_tsv_keeps_other_tensors_per_task(shape):
    stack = _stack(shape, 8)
    out = get_method("tsv").preprocess(stack, "b", {"method": "tsv"})
    assert torch.equal(out, stack)  # at c = eᵢ the tensor is expert i's


def test_tsv_zero_task_vectors_give_zero():
    out = get_method("tsv").preprocess(torch.zeros(T, 6, 5), "w", {"method": "tsv"})
    assert torch.count_nonzero(out) == 0
    one = _stack((6, 5), 9)
    one[1] = 0  # a task that left the tensor alone gets no piece; the others are TSV-M of the two
    out = get_method("tsv").preprocess(one, "w", {"method": "tsv"})
    assert torch.count_nonzero(out[1]) == 0
    pieces, *_ = _ref_tsv(_f64(one))
    assert not pieces[1].any()
    _close("tsv with a zero task", out, np.stack(pieces))


@pytest.mark.parametrize("name,params", [("tsv", {}), ("cart", {"rank_ratio": 0.3}), ("cart", {"rank_ratio": 0.05}),
                                         ("task_arithmetic", {}), ("lines", {})])
@pytest.mark.parametrize("shape,rank", [((40, 30), 3), ((24, 50), 9), ((40, 30), 12)])
def test_equivariant_methods_on_cores_equal_them_on_the_dense_task_vectors(name, params, shape, rank):
    """Low-rank τᵢ = Q Cᵢ Pᵀ (Q, P orthonormal columns): the method on the small cores, lifted, is the
    method on the dense τᵢ (what LoRA experts are merged by: merging/lora.py)."""
    method = get_method(name)
    assert method.equivariant
    rng = np.random.default_rng(rank)
    m, n = shape
    p = q = min(T * rank, m, n)
    big_q = np.linalg.qr(rng.standard_normal((m, p)))[0]
    big_p = np.linalg.qr(rng.standard_normal((n, q)))[0]
    cores = np.stack([rng.standard_normal((p, rank)) @ rng.standard_normal((rank, q)) for _ in range(T)])
    dense = np.stack([big_q @ c @ big_p.T for c in cores])
    full = {"method": name, **params}
    want = method.preprocess(torch.tensor(dense), "w", full)
    got = method.preprocess_core(torch.tensor(cores), shape, "w", full)
    assert got.dtype == torch.float64
    lifted = np.stack([big_q @ g @ big_p.T for g in got.numpy()])
    _close(f"{name} on cores = on dense {shape} rank {rank}", lifted, want.double().numpy())


# ----------------------------------------------------------------------------------------------- CART


def _low_rank(x: np.ndarray, k: int) -> np.ndarray:
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    return u[:, :k] @ np.diag(s[:k]) @ vh[:k]


def _ref_cart(taus: list[np.ndarray], ratio: float):
    n_tasks = len(taus)
    mean = sum(taus) / n_tasks
    if taus[0].ndim != 2:
        return [mean / n_tasks + t - mean for t in taus], mean, None
    k = max(1, math.floor(ratio * min(taus[0].shape) + 1e-9))
    lows = [_low_rank(t - mean, k) for t in taus]
    return [mean / n_tasks + low for low in lows], mean + sum(lows), k


CART_CASES = {  # shape, rank of each τᵢ, rank_ratio, seed
    "6x5 default": ((6, 5), None, 0.08, 11), "5x7 0.5": ((5, 7), None, 0.5, 12),
    "40x30 0.08": ((40, 30), None, 0.08, 13), "rank3_8x6 0.5": ((8, 6), 3, 0.5, 14),
    "6x5 full": ((6, 5), None, 1.0, 15), "bias": ((4,), None, 0.08, 16), "3-D": ((3, 2, 2), None, 0.3, 17),
}


@pytest.mark.parametrize("case", CART_CASES)
def test_cart_matches_reference(case):
    shape, rank, ratio, seed = CART_CASES[case]
    stack = _stack(shape, seed, rank)
    out = get_method("cart").preprocess(stack, "w", {"method": "cart", "rank_ratio": ratio})
    assert out.dtype == torch.float32 and out.shape == stack.shape
    pieces, merged, k = _ref_cart(_f64(stack), ratio)
    for i in range(T):
        _close(f"cart piece {case}", out[i], pieces[i])
    # c = (1, …, 1): θ̄ + Σ LowRank(θᵢ − θ̄) in task-vector terms (τ̄ alone for the other tensors)
    _close(f"cart c=1 {case}", out.sum(0), merged)
    if k is not None:
        mean = stack.double().mean(0).numpy()
        for i in range(T):
            assert np.linalg.matrix_rank(out[i].double().numpy() - mean / T, tol=1e-4) <= k


def test_cart_rank_follows_the_authors_floor():
    from explorer.merging.methods.cart import cart_rank

    assert cart_rank(768, 0.08) == 61 and cart_rank(512, 0.08) == 40   # ⌊40.96⌋, as int() in the authors' code
    assert cart_rank(5, 0.08) == 1 and cart_rank(6, 1.0) == 6 and cart_rank(100, 0.29) == 29


def test_cart_full_rank_is_the_centred_split():
    stack = _stack((6, 5), 18)
    out = get_method("cart").preprocess(stack, "w", {"method": "cart", "rank_ratio": 1.0}).double()
    mean = stack.double().mean(0)
    _close("cart ratio 1", out, mean / T + stack.double() - mean)
    _close("cart ratio 1 sum = τ̄", out.sum(0), mean)


# ------------------------------------------------------------------------------------------ consensus


def _ref_consensus(taus: list[np.ndarray], k: int, lam: float):
    total = sum(taus)
    counts = sum((np.abs(t) > lam * np.abs(total - t)).astype(int) for t in taus)
    keep = counts >= k
    return [np.where(keep, t, 0.0) for t in taus], keep, counts


@pytest.mark.parametrize("shape,k,lam,seed", [((6, 5), 2, 0.6, 21), ((5, 7), 3, 0.3, 22), ((4, 10), 1, 2.0, 23),
                                              ((3, 2, 4), 2, 1.0, 24), ((40,), 2, 0.6, 25)])
def test_consensus_matches_reference(shape, k, lam, seed):
    stack = _stack(shape, seed)
    out = get_method("consensus").preprocess(stack, "w", {"method": "consensus", "min_tasks": k, "mask_lambda": lam})
    assert out.dtype == torch.float32 and out.shape == stack.shape
    pieces, keep, _ = _ref_consensus(_f64(stack), k, lam)
    for i in range(T):
        _close(f"consensus {shape} k={k}", out[i], pieces[i], tol=0.0)
    assert 0 < keep.sum() < keep.size  # each case has kept and dropped entries


def test_consensus_keeps_entries_important_to_k_tasks_with_one_mask():
    # columns: important to 3 tasks, 1, 3, none, 2, 2 (λ = 0.4; strict comparison as in the authors' code)
    stack = torch.tensor([[1.0, 1.0, 1.0, 0.0, 2.0, 0.3],
                          [1.0, 0.01, -1.0, 0.0, 2.0, -0.3],
                          [1.0, 0.01, 0.1, 0.0, -0.05, 0.0]])
    from explorer.merging.methods.consensus import consensus_mask, tall_masks

    counts = tall_masks(stack, 0.4).sum(0).tolist()
    assert counts == [3, 1, 3, 0, 2, 2]
    for k, expected in ((1, [1, 1, 1, 0, 1, 1]), (2, [1, 0, 1, 0, 1, 1]), (3, [1, 0, 1, 0, 0, 0])):
        keep = torch.tensor(expected, dtype=torch.bool)
        assert torch.equal(consensus_mask(stack, k, 0.4), keep)
        params = {"method": "consensus", "min_tasks": k, "mask_lambda": 0.4}
        out = get_method("consensus").preprocess(stack, "w", params)
        assert torch.equal(out, stack * keep)  # the same mask for every task, values untouched
    assert torch.count_nonzero(get_method("consensus").preprocess(
        stack, "w", {"method": "consensus", "min_tasks": 4, "mask_lambda": 0.4})) == 0  # k > T: nothing left


# ---------------------------------------------------------------------------------------------- Iso-C


def _ref_iso(delta: np.ndarray) -> np.ndarray:
    """mean(σ)·UVᵀ by the polar factor from eigh (σ = √eig(ΔᵀΔ)), independently of an SVD routine."""
    if delta.shape[0] < delta.shape[1]:
        return _ref_iso(delta.T).T
    lam, q = np.linalg.eigh(delta.T @ delta)
    sigma = np.sqrt(lam)
    return sigma.mean() * (delta @ (q / sigma) @ q.T)


@pytest.mark.parametrize("shape,seed", [((6, 5), 31), ((5, 7), 32), ((30, 20), 33)])
def test_iso_c_matches_reference_and_flattens_the_spectrum(shape, seed):
    method = get_method("iso_c")
    stack = _stack(shape, seed)
    assert method.preprocess(stack, "w", {"method": "iso_c"}) is stack  # τᵢ′ = τᵢ
    c = torch.tensor([0.7, -0.2, 1.3])
    delta = torch.einsum("t,t...->...", c, stack)
    out = method.combine(delta, "w", {"method": "iso_c"})
    assert out.dtype == torch.float32 and out.shape == delta.shape
    d = delta.double().numpy()
    _close(f"iso_c {shape}", out, _ref_iso(d))
    u, s, vh = np.linalg.svd(d, full_matrices=False)
    o = out.double().numpy()
    _close(f"iso_c flat spectrum {shape}", np.linalg.svd(o, compute_uv=False), np.full(s.shape, s.mean()))
    _close(f"iso_c same singular vectors {shape}", o @ vh.T, s.mean() * u)  # out·vⱼ = mean(σ)·uⱼ for every j
    # a positive scale of every cᵢ scales the result (the reference's α is c = α·(1, …, 1))
    _close(f"iso_c scale {shape}", method.combine(2.5 * delta, "w", {}), 2.5 * out.double().numpy())


def test_iso_c_leaves_other_tensors_and_zero_alone():
    method = get_method("iso_c")
    for shape in ((4,), (3, 2, 2)):
        delta = _stack(shape, 34)[0]
        assert torch.equal(method.combine(delta, "b", {}), delta)
    assert torch.count_nonzero(method.combine(torch.zeros(6, 5), "w", {})) == 0  # c = 0 is θ₀


# ---------------------------------------------------------------------------------------------- LiNeS

OPEN_CLIP_KEYS = (
    ["visual.class_embedding", "visual.positional_embedding", "visual.proj", "visual.conv1.weight",
     "visual.ln_pre.weight", "visual.ln_pre.bias"]
    + [f"visual.transformer.resblocks.{i}.{p}" for i in range(12)
       for p in ("ln_1.weight", "attn.in_proj_weight", "attn.out_proj.bias", "mlp.c_fc.weight", "mlp.c_proj.bias")]
    + ["visual.ln_post.weight", "visual.ln_post.bias"])

LLAMA_KEYS = (["model.embed_tokens.weight"]
              + [f"model.layers.{i}.{p}" for i in range(32)
                 for p in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight")]
              + ["model.norm.weight", "lm_head.weight"])


def test_lines_depths_open_clip():
    from explorer.merging.methods.lines import layer_depths

    d = layer_depths(OPEN_CLIP_KEYS)
    assert set(d) == set(OPEN_CLIP_KEYS)
    for key in ("visual.class_embedding", "visual.positional_embedding", "visual.conv1.weight", "visual.ln_pre.bias"):
        assert d[key] == 0.0
    # proj precedes the blocks in open_clip's state dict, but it is the output projection
    for key in ("visual.proj", "visual.ln_post.weight", "visual.ln_post.bias"):
        assert d[key] == 1.0
    for i in range(12):
        assert d[f"visual.transformer.resblocks.{i}.attn.in_proj_weight"] == pytest.approx(i / 11)
        assert d[f"visual.transformer.resblocks.{i}.mlp.c_proj.bias"] == pytest.approx(i / 11)
    assert d["visual.transformer.resblocks.10.ln_1.weight"] == pytest.approx(10 / 11)  # not block 1


def test_lines_depths_llama_and_others():
    from explorer.merging.methods.lines import layer_depths

    d = layer_depths(LLAMA_KEYS)
    assert d["model.embed_tokens.weight"] == 0.0
    assert d["model.layers.0.mlp.down_proj.weight"] == 0.0
    assert d["model.layers.12.mlp.down_proj.weight"] == pytest.approx(12 / 31)
    assert d["model.layers.31.self_attn.q_proj.weight"] == 1.0
    assert d["model.norm.weight"] == 1.0 and d["lm_head.weight"] == 1.0
    bert = ["embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
            "encoder.layer.5.output.dense.weight", "pooler.dense.weight"]
    assert [layer_depths(bert)[k] for k in bert] == [0.0, 0.0, 1.0, 1.0]
    gpt2 = ["wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.7.mlp.c_fc.weight", "h.3.ln_1.weight",
            "ln_f.weight"]
    assert [layer_depths(gpt2)[k] for k in gpt2] == [0.0, 0.0, 0.0, 1.0, pytest.approx(3 / 7), 1.0]
    # an unknown name outside the blocks: by its position (after the last block key: 1)
    assert layer_depths(["stem_x.w", "layers.0.w", "layers.1.w", "tail_x.w"]) == {
        "stem_x.w": 0.0, "layers.0.w": 0.0, "layers.1.w": 1.0, "tail_x.w": 1.0}
    assert layer_depths(["a.weight", "b.bias"]) == {"a.weight": 1.0, "b.bias": 1.0}  # no blocks
    assert layer_depths(["layers.0.w", "embed.w"]) == {"layers.0.w": 1.0, "embed.w": 0.0}  # one block


def test_lines_scaling_and_apply():
    from explorer.merging.methods.lines import apply_lines, layer_depths, lines_scale

    params = {"alpha": 0.2, "beta": 0.6}
    assert lines_scale(0.0, params) == pytest.approx(0.2) and lines_scale(1.0, params) == pytest.approx(0.8)
    # the paper's λ(ℓ) = α + β(ℓ − 1)/(L − 1) with 1-based ℓ
    for ell in range(1, 13):
        assert lines_scale((ell - 1) / 11, params) == pytest.approx(0.2 + 0.6 * (ell - 1) / 11)
    depths = layer_depths(OPEN_CLIP_KEYS)
    stack = _stack((5, 4), 41)
    key = "visual.transformer.resblocks.4.mlp.c_fc.weight"
    _close("lines apply", apply_lines(stack, key, depths, params), stack.double().numpy() * (0.2 + 0.6 * 4 / 11))
    with pytest.raises(KeyError):
        apply_lines(stack, "not.a.key", depths, params)
    method = get_method("lines")
    assert method.preprocess(stack, key, {"method": "lines", **method.defaults}) is stack  # the engine scales


# --------------------------------------------------------------------------------------------- checks

BAD = [
    ("cart", {"rank_ratio": 0.0}, "merge.rank_ratio"), ("cart", {"rank_ratio": -0.1}, "merge.rank_ratio"),
    ("cart", {"rank_ratio": 1.5}, "merge.rank_ratio"), ("cart", {"rank_ratio": "0.1"}, "merge.rank_ratio"),
    ("cart", {"rank_ratio": None}, "merge.rank_ratio"), ("cart", {"rank_ratio": True}, "merge.rank_ratio"),
    ("cart", {"rank_ratio": float("nan")}, "merge.rank_ratio"),
    ("consensus", {"min_tasks": 0, "mask_lambda": 0.6}, "merge.min_tasks"),
    ("consensus", {"min_tasks": -1, "mask_lambda": 0.6}, "merge.min_tasks"),
    ("consensus", {"min_tasks": 1.5, "mask_lambda": 0.6}, "merge.min_tasks"),
    ("consensus", {"min_tasks": "2", "mask_lambda": 0.6}, "merge.min_tasks"),
    ("consensus", {"min_tasks": True, "mask_lambda": 0.6}, "merge.min_tasks"),
    ("consensus", {"min_tasks": 2, "mask_lambda": 0.0}, "merge.mask_lambda"),
    ("consensus", {"min_tasks": 2, "mask_lambda": -0.5}, "merge.mask_lambda"),
    ("consensus", {"min_tasks": 2, "mask_lambda": float("inf")}, "merge.mask_lambda"),
    ("consensus", {"min_tasks": 2, "mask_lambda": "x"}, "merge.mask_lambda"),
    ("lines", {"alpha": -0.1, "beta": 1.0}, "merge.lines.alpha"),
    ("lines", {"alpha": float("nan"), "beta": 1.0}, "merge.lines.alpha"),
    ("lines", {"alpha": "0", "beta": 1.0}, "merge.lines.alpha"),
    ("lines", {"alpha": 0.0, "beta": -1.0}, "merge.lines.beta"),
    ("lines", {"alpha": 0.0, "beta": True}, "merge.lines.beta"),
    ("lines", {"alpha": 0.0, "beta": 0.0}, "merge.lines.beta"),
]


@pytest.mark.parametrize("name,params,where", BAD)
def test_check_refuses_bad_values(name, params, where):
    with pytest.raises(SpecError) as info:
        get_method(name).check({"method": name, **params})
    message = str(info.value)
    assert message.startswith(where + " ") and "\n" not in message


@pytest.mark.parametrize("name,params", [("cart", {"rank_ratio": 1.0}), ("cart", {"rank_ratio": 1e-3}),
                                         ("consensus", {"min_tasks": 1, "mask_lambda": 2.0}),
                                         ("consensus", {"min_tasks": np.int64(3), "mask_lambda": np.float32(0.2)}),
                                         ("lines", {"alpha": 1.0, "beta": 0.0}), ("lines", {"alpha": 0, "beta": 2})])
def test_check_accepts_good_values(name, params):
    get_method(name).check({"method": name, **params})


# --- low-memory preprocessing: the same τᵢ′ with one or two pieces in memory -------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kth_largest_magnitude_is_exact_with_ties_and_zeros(dtype):
    from explorer.merging.methods.ties import kth_largest_magnitude

    g = torch.Generator().manual_seed(3)
    x = torch.randn(5003, generator=g).to(dtype)
    x[:40] = 0.0
    x[40:400:3] = -0.75  # many equal magnitudes
    for k in (1, 2, 37, 2500, 5003):
        want = x.abs().kthvalue(x.numel() - k + 1).values
        assert kth_largest_magnitude(x, k, chunk=700).item() == want.item(), k


@pytest.mark.parametrize("name,params", [("ties", {"density": 0.2}), ("ties", {"density": 1.0}),
                                         ("dare", {"density": 0.3, "seed": 4}),
                                         ("consensus", {"min_tasks": 2, "mask_lambda": 0.5})])
@pytest.mark.parametrize("shape", [(3, 40, 31), (4, 17), (2, 1000, 3), (3, 300, 500)])
def test_streamed_preprocessing_equals_the_stacked_one(name, params, shape):
    """What the preprocessed-experts cache writes (pieces produced one at a time, TIES and DARE holding
    one or two of them) is bit for bit what the method computes on the whole stack."""
    method = get_method(name)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape)))
    before = x.clone()
    want = method.preprocess(x, "layers.0.w", params)
    assert torch.equal(x, before)  # the stacked version leaves its input alone
    got, filled = torch.full_like(x, float("nan")), []

    def fill(i, out, start=0):  # the whole piece, or its flat elements from `start`
        filled.append(i)
        out.copy_(x[i] if start == 0 and out.shape == x[i].shape else x[i].reshape(-1)[start:start + out.numel()])

    method.preprocess_streamed(fill, shape[0], tuple(shape[1:]), "layers.0.w", params, lambda i, p: got[i].copy_(p))
    assert torch.equal(got, want)
    assert sorted(set(filled)) == list(range(shape[0]))


@pytest.mark.parametrize("name,params", [("tsv", {}), ("cart", {"rank_ratio": 0.08}), ("cart", {"rank_ratio": 0.5})])
@pytest.mark.parametrize("shape,rank,zero", [((3, 40, 31), None, False), ((3, 31, 40), None, False),
                                             ((3, 300, 70), None, False), ((3, 60, 50), 4, True),
                                             ((4, 2, 7), None, False), ((2, 5), None, False)])
def test_streamed_svd_methods_equal_the_stacked_ones(name, params, shape, rank, zero):
    """TSV-M and CART on a streamed model (pieces produced again, top singular triplets from Gram
    matrices, two pieces held) compute what the stacked methods do, within 1e-6 of the largest entry:
    tall and wide layers, rank below TSV-M's k with a task that left the tensor alone, Tk > m, 1-D."""
    method = get_method(name)
    x = _stack(shape[1:], len(shape) + shape[1], rank, n_tasks=shape[0])
    if zero:
        x[1] = 0
    full = {"method": name, **params}
    want = method.preprocess(x, "layers.0.w", full)
    got = torch.full_like(x, float("nan"))

    def fill(i, out, start=0):
        out.copy_(x[i] if start == 0 and out.shape == x[i].shape else x[i].reshape(-1)[start:start + out.numel()])

    method.preprocess_streamed(fill, shape[0], tuple(shape[1:]), "layers.0.w", full, lambda i, p: got[i].copy_(p))
    _close(f"{name} streamed = stacked {shape}", got, want)
    if zero and name == "tsv":
        assert torch.count_nonzero(got[1]) == 0
