"""LoRA experts: task vectors kept as peft adapters' low-rank factors, τᵢ[W] = sᵢ Bᵢ Aᵢ.

A peft adapter folder (adapter_config.json + adapter_model.safetensors, keys such as
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` (r, in) and `…lora_B.weight`
(out, r)) fine-tunes a few linear layers of one base by a low-rank update scaled by
sᵢ = lora_alpha / r (lora_alpha / √r with `use_rslora`), as peft's `LoraLayer.update_layer` does.
The factors are a few MB even for a 7B model, so they stay in memory in their own dtype and the
dense τᵢ is never held for more than one layer:

- task arithmetic: θ₀ + Σ cᵢ sᵢ Bᵢ Aᵢ is one matmul of the concatenated factors,
  [c₁s₁B₁ | … | c_T s_T B_T] @ [A₁; …; A_T], added in place to θ₀'s float32 copy: one dense layer;
- methods whose preprocessing commutes with orthonormal bases (`MergeMethod.equivariant`: TSV-M,
  CART, LiNeS, task arithmetic with LiNeS): one layer's τᵢ are Q Cᵢ Pᵀ with Q, P orthonormal bases of
  the concatenated factors' column and row spaces (two QRs) and cores Cᵢ of at most Σrᵢ × Σrᵢ
  (`layer_cores`); the method runs on the cores, and the merge is Q (Σ cᵢ Cᵢ′) Pᵀ, one matmul of
  inner size Σrᵢ as for task arithmetic. Recomputed at each merge (milliseconds; keeping Q and P for
  every layer would hold more than the adapters), never denser than the one output layer;
- a method that is not linear (each merge's Σ cᵢ τᵢ transformed): one layer's T pieces densified at
  every point, as full experts are read whole at every point. Iso-C itself is refused by the spec
  for LoRA experts: it sizes all min(m, n) singular values alike, and beyond the update's rank Σrᵢ
  their directions are whatever null space the SVD routine returns;
- the methods that need dense τᵢ entries (TIES, DARE, consensus: top-k, masks): `DensifiedAdapter`
  hands sᵢBᵢAᵢ to the preprocessed-experts cache (preprocessed.py) one tensor at a time
  (`task_vector_into`, straight into the method's buffer), so τᵢ′ is computed once, as for full
  experts, with less than one layer's T pieces dense at a time; each merge then reads it back one
  target tensor of one expert at a time.

Exactness: a merged adapter (`write_merged_adapter`) reproduces task arithmetic exactly, rank
Σ rᵢ, zero-padded where experts target different modules or ranks.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from explorer.errors import CheckpointError
from explorer.merging.methods import get_method
from explorer.merging.methods.lines import apply_lines, apply_lines_, layer_depths
from explorer.merging.preprocessed import ChunkReader
from explorer.merging.safetensors_file import SafetensorsCheckpoint
from explorer.merging.task_vectors import coefficient_vector

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Elements read at a time from θ₀ and the preprocessed cache at each merge (4 MiB of float32), into reused buffers.
MERGE_CHUNK = 1 << 20
#: peft's prefix of a wrapped model's keys (PeftModel.base_model.model is the transformers model).
PEFT_PREFIX = "base_model.model."
FACTOR_SUFFIXES = {".lora_A.weight": "a", ".lora_B.weight": "b"}
#: adapter_config.json options that change what the adapter computes beyond s·B·A on a weight:
#: (key, value that is fine, why it is refused).
UNSUPPORTED = (
    ("use_dora", False, "DoRA rescales each column by a learned magnitude: not a low-rank τ"),
    ("bias", "none", "trained biases are not low-rank factors"),
    ("lora_bias", False, "a trained lora_B bias is not a low-rank factor"),
    ("fan_in_fan_out", False, "transposed (Conv1D) weights are not supported"),
    ("modules_to_save", None, "fully trained modules are not low-rank factors"),
    ("alpha_pattern", {}, "per-module lora_alpha is not supported"),
)


@dataclass(frozen=True)
class LoraFactors:
    """One target weight's update s·B·A: a (r, in), b (out, r) in the file's dtype, s a float."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    def delta(self, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
        """The dense update s·B·A in `dtype` (one layer)."""
        b = self.b.to(device=device, dtype=dtype)
        return (b @ self.a.to(device=device, dtype=dtype)).mul_(self.scale)


def layer_cores(fs: list[LoraFactors | None], shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's task vectors τᵢ = sᵢBᵢAᵢ as Q Cᵢ Pᵀ, float64: Q (m, p) and P (n, q) orthonormal bases
    of the concatenated factors' spans (QR of [s₁B₁ | …] and of [A₁; …]ᵀ), cores Cᵢ (T, p, q) with
    p, q ≤ Σrᵢ; Cᵢ = 0 where task i's adapter leaves the layer alone (None)."""
    m, n = shape
    device = next(f.a.device for f in fs if f is not None)
    bs = [f.b.to(torch.float64) * f.scale if f is not None else torch.zeros((m, 0), dtype=torch.float64, device=device)
          for f in fs]
    as_ = [f.a.to(torch.float64) if f is not None else torch.zeros((0, n), dtype=torch.float64, device=device)
           for f in fs]
    q, rb = torch.linalg.qr(torch.cat(bs, dim=1))
    p, ra = torch.linalg.qr(torch.cat(as_, dim=0).T)
    cores, start = [], 0
    for b in bs:
        block = slice(start, start + b.shape[1])
        cores.append(rb[:, block] @ ra[:, block].T)
        start += b.shape[1]
    return q, torch.stack(cores), p


def _read_config(folder: Path, what: str) -> dict:
    path = folder / ADAPTER_CONFIG
    if not folder.is_dir():
        raise CheckpointError(f"{what} {folder}: model.experts_format peft expects an adapter folder "
                              f"({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{what} {folder}: no {ADAPTER_CONFIG} (not a peft adapter folder)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable adapter config ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: unreadable adapter config (not a mapping)")
    return config


def check_adapter_folder(folder: Path, what: str) -> dict:
    """The adapter's config, checked without reading any tensor: one line naming the file or key at fault."""
    folder = Path(folder)
    config = _read_config(folder, what)
    path = folder / ADAPTER_CONFIG
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path}: peft_type is {config.get('peft_type')!r}; only LORA adapters are supported")
    for key, fine, why in UNSUPPORTED:
        value = config.get(key)
        if value is None or value == fine or (isinstance(value, (dict, list)) and not value):
            continue
        raise CheckpointError(f"{path}: {key} = {json.dumps(value)} is not supported ({why})")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise CheckpointError(f"{path}: {key} must be a positive number, got {json.dumps(value)}")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(f"{what} {folder}: no {ADAPTER_WEIGHTS} (peft adapters in .bin are not read: "
                              "they would need unpickling)")
    return config


def scaling(config: Mapping, rank: int) -> float:
    """peft's LoRA scaling: lora_alpha / r, or lora_alpha / √r with use_rslora."""
    alpha = float(config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


class LoraAdapter:
    """A peft LoRA adapter folder read as factors per base tensor key (`factors[key]`, key as in the base)."""

    def __init__(self, folder: str | Path, name: str | None = None):
        self.folder = Path(folder)
        self.name = name or str(folder)
        self.config = check_adapter_folder(self.folder, self.name)
        path = self.folder / ADAPTER_WEIGHTS
        from safetensors import SafetensorError, safe_open

        pieces: dict[str, dict[str, torch.Tensor]] = {}
        #: whole tensors peft saved beside the factors (`save_embedding_layers`: the embeddings or lm_head of
        #: an adapter that targets them); allowed only as unchanged copies of the base's (check_base)
        self.copies: dict[str, torch.Tensor] = {}
        try:
            with safe_open(str(path), framework="pt") as st:
                for raw in st.keys():
                    key, part = self._base_key(raw, path)
                    if part == "copy":
                        self.copies[key] = st.get_tensor(raw)
                    else:
                        pieces.setdefault(key, {})[part] = st.get_tensor(raw)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:200]})") from None
        if not pieces:
            raise CheckpointError(f"{path}: the adapter holds no LoRA factors")
        fixed_rank = not self.config.get("rank_pattern")
        self.factors: dict[str, LoraFactors] = {}
        for key, got in pieces.items():
            if set(got) != {"a", "b"}:
                missing = "lora_B" if "a" in got else "lora_A"
                raise CheckpointError(f"{path}: {key!r} has no {missing} factor")
            a, b = got["a"], got["b"]
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise CheckpointError(f"{path}: {key!r} has lora_A of shape {tuple(a.shape)} and lora_B of shape "
                                      f"{tuple(b.shape)}; expected (r, in) and (out, r)")
            if not (a.dtype.is_floating_point and b.dtype.is_floating_point):
                raise CheckpointError(f"{path}: {key!r} has non-floating factors ({a.dtype}, {b.dtype})")
            if fixed_rank and a.shape[0] != int(self.config["r"]):
                raise CheckpointError(f"{path}: {key!r} has rank {a.shape[0]}; {ADAPTER_CONFIG} says r = "
                                      f"{self.config['r']} (and has no rank_pattern)")
            if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
                raise CheckpointError(f"{path}: {key!r} has NaN or inf in its factors")
            self.factors[key] = LoraFactors(a, b, scaling(self.config, int(a.shape[0])))

    @staticmethod
    def _base_key(raw: str, path: Path) -> tuple[str, str]:
        """('model.layers.0.self_attn.q_proj.weight', 'a') for peft's `base_model.model.….lora_A.weight`."""
        for suffix, part in FACTOR_SUFFIXES.items():
            if raw.endswith(suffix):
                module = raw[: -len(suffix)]
                module = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
                return module + ".weight", part
        if raw.startswith(PEFT_PREFIX) and not any(p in raw for p in (".lora_", "modules_to_save", "original_module")):
            return raw[len(PEFT_PREFIX):].replace(".base_layer.", "."), "copy"
        raise CheckpointError(f"{path}: tensor {raw!r} is not a LoRA factor of a linear layer "
                              "(embedding LoRA, DoRA magnitudes and saved modules are not supported)")

    @property
    def nbytes(self) -> int:
        return sum(f.a.numel() * f.a.element_size() + f.b.numel() * f.b.element_size() for f in self.factors.values())

    def check_base(self, base: SafetensorsCheckpoint, keys: list[str] | None = None) -> None:
        """Every target exists in the base, floating, with shape (out, in) = (B rows, A columns); inside `keys`."""
        allowed = set(keys) if keys is not None else None
        for key, f in self.factors.items():
            entry = base.entries.get(key)
            if entry is None:
                raise CheckpointError(f"{self.name}: the adapter targets {key!r}, which the base {base.name} has not")
            want = (int(f.b.shape[0]), int(f.a.shape[1]))
            if tuple(entry.shape) != want:
                raise CheckpointError(f"{self.name}: the adapter's update of {key!r} has shape {want}; "
                                      f"the base has {tuple(entry.shape)}")
            if allowed is not None and key not in allowed:
                raise CheckpointError(f"{self.name}: the adapter targets {key!r}, outside the merged tensors "
                                      "(model.merge_prefix)")
        for key, t in self.copies.items():
            entry = base.entries.get(key)
            if entry is None or tuple(entry.shape) != tuple(t.shape) or not torch.equal(base.read(key).to(t.dtype), t):
                raise CheckpointError(f"{self.name}: the adapter saves its own {key!r}, unlike the base's "
                                      "(fully trained modules are not supported: only LoRA factors)")


class DensifiedAdapter:
    """An adapter seen as a full checkpoint θ₀ + s·B·A, one tensor at a time (`read`), for the
    preprocessed-experts cache (preprocessed.py): the methods that need dense τᵢ′ compute them once."""

    def __init__(self, base: SafetensorsCheckpoint, adapter: LoraAdapter):
        self.base, self.adapter, self.name = base, adapter, adapter.name
        self.entries = base.entries

    def read(self, key: str) -> torch.Tensor:
        t = self.base.read(key)
        f = self.adapter.factors.get(key)
        if f is None:
            return t
        wide = torch.float64 if t.dtype == torch.float64 else torch.float32
        return t.to(wide).add_(f.delta(wide))

    def task_vector_into(self, key: str, out: torch.Tensor, start: int = 0) -> None:
        """τ = s·B·A of one tensor into `out` (float32: the tensor's shape, one matmul with no other dense
        copy; or flat for its elements [start, start + out.numel()), from the rows of B that hold them);
        0 where the adapter leaves the tensor alone. A range may differ from the same elements of the
        whole in the last bit (BLAS results depend on the operands' sizes): a method that mixes the two
        would not be reproducible, so consensus asks for the same ranges every time."""
        f = self.adapter.factors.get(key)
        if f is None:
            out.zero_()
            return
        a = f.a.to(out.dtype)
        if start == 0 and tuple(out.shape) == tuple(self.entries[key].shape):
            torch.matmul(f.b.to(out.dtype), a, out=out)
            out.mul_(f.scale)
            return
        n = a.shape[1]
        first, last = start // n, -(-(start + out.numel()) // n)
        rows = (f.b[first:last].to(out.dtype) @ a).mul_(f.scale).view(-1)
        out.view(-1).copy_(rows[start - first * n:start - first * n + out.numel()])


def route(params: Mapping, adapters: list[LoraAdapter], base: SafetensorsCheckpoint, keys: list[str]) -> str:
    """How LoRA experts are merged under `params`:

    'factors': plain task arithmetic from the factors (LoraMerger; a merged adapter is exact);
    'cores': an equivariant method (TSV-M, CART, LiNeS) on each layer's small cores at every merge (LoraMerger);
    'per_point': a method that is not linear (Iso-C) transforms each merge: one densified layer at a
    time at every point (LoraMerger), as full experts do;
    'preprocess': every other method's τᵢ′ (TIES, DARE, consensus) computed once, one densified layer at a
    time, into the preprocessed-experts cache, then read back at each merge (LoraMerger)."""
    method = get_method(params["method"])
    if not method.linear:
        return "per_point"
    if params["method"] == "task_arithmetic" and not params.get("lines"):
        return "factors"
    if method.equivariant:
        return "cores"
    return "preprocess"


class LoraMerger:
    """Writes θ₀ + Σ cᵢ τᵢ′ into a loaded model from LoRA factors, one layer at a time.

    Same interface as `streaming.StreamingMerger` (`apply`, `iter_merged`, `merged_state_dict`,
    `iter_preprocessed`, `keys`, `base`, `close`). `keys`: every tensor merged (as for full experts,
    so LiNeS depths agree); only those some adapter targets ever differ from θ₀.
    """

    def __init__(self, target: torch.nn.Module, base: SafetensorsCheckpoint, adapters: list[LoraAdapter],
                 keys: list[str], params: Mapping, device: str | torch.device = "cpu",
                 log: Callable[[str], None] | None = None, preprocessed: list[SafetensorsCheckpoint] | None = None):
        """`preprocessed`: θ₀ + τᵢ′ per expert from the preprocessed-experts cache (route 'preprocess'),
        read one target tensor at a time at each merge."""
        self.params = dict(params)
        self.preprocessed = preprocessed
        self.merge_method = get_method(self.params["method"])
        self.base, self.experts, self.keys = base, adapters, list(keys)
        self.device = torch.device(device)
        self.depths = layer_depths(self.keys) if self.params.get("lines") else {}
        #: plain task arithmetic merges from the factors; equivariant methods from the layers' cores;
        #: anything else densifies one layer's T pieces (or reads the preprocessed experts back)
        self.factor_level = self.params["method"] == "task_arithmetic" and not self.depths and preprocessed is None
        self.from_cores = self.merge_method.equivariant and not self.factor_level and preprocessed is None
        for ad in adapters:
            ad.check_base(base, self.keys)
        merged = set(self.keys)
        self.targets = [k for k in self.keys if any(k in ad.factors for ad in adapters)]
        named = dict(target.state_dict(keep_vars=True))
        missing = [k for k in self.targets if k not in named]
        if missing:
            raise CheckpointError(f"{base.name}: tensor {missing[0]!r} has no parameter of that name in the loaded model")
        self.slots = {k: named[k].data for k in self.targets}
        self.target = target
        self._factors = [{k: LoraFactors(f.a.to(self.device), f.b.to(self.device), f.scale)
                          for k, f in ad.factors.items() if k in merged} for ad in adapters]
        self.coefficients: np.ndarray | None = None
        self._reader = ChunkReader(chunk=MERGE_CHUNK)
        self.adapter_bytes = sum(ad.nbytes for ad in adapters)
        (log or _stderr)(self.describe())

    def describe(self) -> str:
        how = ("task arithmetic from the factors, one dense layer at a time" if self.factor_level else
               f"{self.merge_method.title} on each layer's cores (QR of the concatenated factors, cores of at most "
               f"Σrᵢ × Σrᵢ), one dense layer at a time" if self.from_cores else
               f"{self.merge_method.title}'s τᵢ′ (computed once) read back one layer at a time"
               if self.preprocessed is not None else
               f"{self.merge_method.title} on one layer's {len(self.experts)} densified pieces at a time")
        return (f"merge memory: {len(self.experts)} LoRA adapters ({self.adapter_bytes / 1e6:.1f} MB of factors, "
                f"{len(self.targets)} target tensors) held; {how}")

    # --- one layer -----------------------------------------------------------------------------
    def _acc_dtype(self, key: str) -> torch.dtype:
        return torch.float64 if self.base.entries[key].dtype == torch.float64 else torch.float32

    def _base(self, key: str) -> torch.Tensor:
        """θ₀'s tensor in the accumulation dtype, read in chunks (no whole copy in the file's dtype)."""
        dtype = self._acc_dtype(key)
        out = torch.empty(tuple(self.base.entries[key].shape), dtype=dtype, device=self.device)
        flat = out.view(-1)
        for at, part in self._reader.float_chunks(self.base, key, dtype=dtype):
            flat[at:at + part.numel()].copy_(part)
        return out

    def _pieces(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        """τᵢ of one layer for every task, densified (T, out, in); zeros where an adapter leaves it alone."""
        shape = tuple(self.base.entries[key].shape)
        stack = torch.zeros((len(self.experts), *shape), dtype=dtype, device=self.device)
        for i, fs in enumerate(self._factors):
            if key in fs:
                stack[i] = fs[key].delta(dtype, self.device)
        return stack

    def _core_pieces(self, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Q, the method's pieces as cores (T, p, q), P), float64: τᵢ′ = Q Cᵢ′ Pᵀ (LiNeS applied)."""
        shape = tuple(self.base.entries[key].shape)
        q, cores, p = layer_cores([f.get(key) for f in self._factors], shape)
        pieces = self.merge_method.preprocess_core(cores, shape, key, self.params)
        if self.depths:
            apply_lines_(pieces, key, self.depths, self.params["lines"])
        return q, pieces, p

    def _preprocessed(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        if self.from_cores:
            q, pieces, p = self._core_pieces(key)
            return torch.stack([(q @ piece @ p.T).to(dtype) for piece in pieces])
        stack = self.merge_method.preprocess(self._pieces(key, dtype), key, self.params)
        return apply_lines(stack, key, self.depths, self.params["lines"]) if self.depths else stack

    def merged_tensor(self, key: str, c: np.ndarray) -> torch.Tensor:
        """θ₀ + Σ cᵢ τᵢ′ of one target tensor in float32 (float64 for a float64 base)."""
        out = self._base(key)
        dtype = out.dtype
        if self.factor_level:
            used = [(fs[key], float(ci)) for fs, ci in zip(self._factors, c) if key in fs and float(ci) != 0.0]
            if used:  # [c₁s₁B₁ | …] @ [A₁; …]: one matmul, accumulated into θ₀'s copy
                b = torch.cat([f.b.to(dtype) * (ci * f.scale) for f, ci in used], dim=1)
                a = torch.cat([f.a.to(dtype) for f, _ in used], dim=0)
                out.addmm_(b, a)
            return out
        if self.from_cores:  # Q (Σ cᵢ Cᵢ′) Pᵀ: one matmul of inner size ≤ Σrᵢ, like task arithmetic
            q, pieces, p = self._core_pieces(key)
            core = torch.einsum("t,tpq->pq", torch.as_tensor(c, dtype=pieces.dtype, device=pieces.device), pieces)
            return out.addmm_((q @ core).to(dtype), p.T.to(dtype))
        if self.preprocessed is not None:  # (1 − Σcᵢ) θ₀ + Σ cᵢ (θ₀ + τᵢ′), read in chunks into reused buffers
            out.mul_(1.0 - float(np.sum(c)))
            flat = out.view(-1)
            for ck, ci in zip(self.preprocessed, c):
                if float(ci) != 0.0:
                    for at, part in self._reader.float_chunks(ck, key, dtype=dtype):
                        flat[at:at + part.numel()].add_(part.to(self.device), alpha=float(ci))
            return out
        stack = self._preprocessed(key, dtype)
        ct = torch.as_tensor(c, dtype=stack.dtype, device=self.device)
        delta = torch.einsum("t,t...->...", ct, stack)
        if not self.merge_method.linear:
            delta = self.merge_method.combine(delta, key, self.params)
        return out.add_(delta.to(dtype))

    # --- the merger's interface ----------------------------------------------------------------
    def _coefficients(self, coefficients) -> np.ndarray:
        return coefficient_vector(coefficients, len(self.experts))

    @torch.no_grad()
    def apply(self, coefficients) -> None:
        """Set every target parameter to θ₀ + Σ cᵢ τᵢ′ (rounded once to its dtype); the others stay θ₀."""
        c = self._coefficients(coefficients)
        for key in self.targets:
            self.slots[key].copy_(self.merged_tensor(key, c))  # rounded once to the slot's dtype, no other copy
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.coefficients = c.copy()

    @torch.no_grad()
    def iter_merged(self, coefficients) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, CPU tensor in the base's dtype) for every base tensor in file order (for exports)."""
        c = self._coefficients(coefficients)
        targets = set(self.targets)
        order = sorted(self.base.entries, key=lambda k: (str(self.base.entries[k].file), self.base.entries[k].offset))
        for key in order:
            if key in targets:
                yield key, self.merged_tensor(key, c).to(device="cpu", dtype=self.base.entries[key].dtype)
            else:
                yield key, self.base.read(key)

    def merged_state_dict(self, coefficients, base=None) -> dict[str, torch.Tensor]:
        return dict(self.iter_merged(coefficients))

    @torch.no_grad()
    def iter_preprocessed(self) -> Iterator[tuple[str, torch.Tensor | None, list[torch.Tensor]]]:
        """(key, θ₀ in float32, [θ₀ + τᵢ′]) per merged tensor, (key, None, [θ₀] * T) for the others: the
        densified experts mergekit reads, one tensor at a time."""
        merged, targets = set(self.keys), set(self.targets)
        n = len(self.experts)
        for key in self.base.entries:
            t = self.base.read(key)
            if key not in merged:
                yield key, None, [t] * n
                continue
            b = t.to(torch.float32)
            if key not in targets:
                yield key, b, [b] * n
                continue
            if self.preprocessed is not None:
                yield key, b, [ck.read(key).to(torch.float32) for ck in self.preprocessed]
                continue
            stack = self._preprocessed(key, torch.float32).cpu()
            yield key, b, [b + stack[i] for i in range(n)]

    def close(self) -> None:
        self._factors = []
        for ck in [self.base, *(self.preprocessed or [])]:
            ck.close()


def write_merged_adapter(adapters: list[LoraAdapter], coefficients, out_dir: str | Path,
                         base_model: str | None = None) -> Path:
    """Task arithmetic's Σ cᵢ sᵢ Bᵢ Aᵢ as one peft adapter folder, exactly (float32 factors).

    Per target: lora_A = [A₁; …], lora_B = [c₁s₁B₁ | …] over the experts with cᵢ ≠ 0, zero-padded to
    the largest concatenated rank R (zeros add nothing), with r = lora_alpha = R so peft's scaling is 1.
    """
    from safetensors.torch import save_file

    from explorer.version import __version__

    c = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    used = [(ad, float(ci)) for ad, ci in zip(adapters, c) if ci != 0.0]
    keys = sorted({k for ad, _ in used for k in ad.factors})
    pieces = {}
    for key in keys:
        fs = [(ad.factors[key], ci) for ad, ci in used if key in ad.factors]
        pieces[key] = (torch.cat([f.b.to(torch.float32) * float(ci * f.scale) for f, ci in fs], dim=1),
                       torch.cat([f.a.to(torch.float32) for f, _ in fs], dim=0))
    rank = max((a.shape[0] for _, a in pieces.values()), default=1)
    tensors = {}
    for key, (b, a) in pieces.items():
        pad = rank - a.shape[0]
        module = PEFT_PREFIX + key[: -len(".weight")]
        tensors[module + ".lora_A.weight"] = torch.nn.functional.pad(a, (0, 0, 0, pad)).contiguous()
        tensors[module + ".lora_B.weight"] = torch.nn.functional.pad(b, (0, pad)).contiguous()
    first = adapters[0].config
    config = {
        "peft_type": "LORA", "task_type": first.get("task_type"),
        "base_model_name_or_path": base_model if base_model is not None else first.get("base_model_name_or_path"),
        "r": int(rank), "lora_alpha": int(rank), "use_rslora": False, "lora_dropout": 0.0, "bias": "none",
        "target_modules": [k[: -len(".weight")] for k in keys], "fan_in_fan_out": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "rank_pattern": {}, "alpha_pattern": {},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={
        "format": "pt", "merge-explorer": __version__, "coefficients": json.dumps([float(x) for x in c])})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
