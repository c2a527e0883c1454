"""The experiment spec: validated once at the edge (frozen pydantic models, unknown keys refused
with the closest valid key suggested), then trusted inside. Paths are relative to the spec file.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from explorer.errors import SpecError
from explorer.experiment.families.registry import names
from explorer.merging.methods.registry import OPTIONAL, get_method, merge_parameters, method_names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    family: str = "open_clip"
    architecture: Optional[str] = None
    config_dir: Optional[str] = None
    base: str
    merge_prefix: Optional[str] = None
    trust_pickle: bool = False
    memory: Literal["auto", "resident", "streaming"] = "auto"  # hf_causal_lm: where task vectors live
    # hf_causal_lm: `peft` reads each task's checkpoint as a LoRA adapter folder over `base` (merging/lora.py)
    experts_format: Literal["full", "peft"] = "full"

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        if ":" not in v and v not in names():
            close = difflib.get_close_matches(v, names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown family {v!r}{hint} (families: {', '.join(names())}, or 'package.module:factory')")
        return v

    @model_validator(mode="after")
    def _peft_needs_hf(self) -> "ModelSpec":
        if self.experts_format == "peft" and self.family != "hf_causal_lm":
            raise ValueError(f"experts_format 'peft' (LoRA adapter folders) needs family 'hf_causal_lm', "
                             f"not {self.family!r}")
        return self


class TaskSpec(_Strict):
    checkpoint: str
    evaluator: str
    metric: str = "accuracy"
    higher_is_better: Optional[bool] = None
    params: dict[str, Any] = {}

    def maximise(self) -> bool:
        """Losses are minimised unless the spec says otherwise; everything else is maximised."""
        if self.higher_is_better is not None:
            return self.higher_is_better
        return self.metric not in ("loss", "cross_entropy", "perplexity", "error")


class LinesSpec(_Strict):
    """LiNeS layer scaling of every τᵢ′ (α + β·depth): shallow layers kept near θ₀."""

    alpha: Optional[float] = None
    beta: Optional[float] = None


class MergeSpec(_Strict):
    method: str = "task_arithmetic"  # a registered merge method (explorer/merging/methods/)
    density: float = 0.2             # ties, dare
    seed: int = 0                    # dare
    rank_ratio: Optional[float] = None   # cart
    min_tasks: Optional[int] = None      # consensus
    mask_lambda: Optional[float] = None  # consensus
    lines: Optional[LinesSpec] = None    # LiNeS on top of any method (`method: lines` is task arithmetic with it)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        known = method_names()
        if v not in known:
            close = difflib.get_close_matches(v, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown merge method {v!r}{hint} (methods: {', '.join(known)})")
        return v

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if not 0 <= v < 2**31:
            raise ValueError("seed must be an integer in [0, 2**31)")
        return v

    @field_validator("density")
    @classmethod
    def _density_range(cls, v: float) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError("density must be in (0, 1]")
        return v

    @model_validator(mode="after")
    def _method_reads_its_parameters(self) -> "MergeSpec":
        """Parameters of another method are refused (density and seed, read by TIES and DARE, are
        accepted everywhere, as before); the method checks its own values."""
        try:
            merge_parameters(self)
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return self


class EvaluationSpec(_Strict):
    """How many of each task's examples a point is measured on (explorer.core.sampling).

    examples: "full" (every example, the default), "auto" (a seeded subsample for design points, more
    where the adaptive rounds place points on the front; picks, verify and polish on the full set)
    or a count (design and adaptive points on that many examples of every task).
    """

    examples: Union[Literal["full", "auto"], int] = "full"

    @field_validator("examples", mode="before")
    @classmethod
    def _count(cls, v):
        if isinstance(v, bool) or (isinstance(v, (int, float)) and not isinstance(v, bool) and (v != int(v) or v < 1)):
            raise ValueError(f"{v!r} is not 'full', 'auto' or a positive number of examples")
        return v


class Spec(_Strict):
    name: str = "experiment"
    store: Optional[str] = None
    model: ModelSpec
    tasks: dict[str, TaskSpec]
    merge: MergeSpec = MergeSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    bounds: Union[tuple[float, float], list[tuple[float, float]]] = (0.0, 1.0)
    budget: Optional[int] = None
    seed: int = 0
    device: str = "auto"
    batch_size: Optional[int] = None

    @model_validator(mode="after")
    def _iso_c_needs_full_experts(self) -> "Spec":
        if self.model.experts_format == "peft" and self.merge.method == "iso_c":
            raise ValueError("merge.method 'iso_c' is not defined for model.experts_format 'peft': Iso-C gives every "
                             "singular value of Σcᵢτᵢ the same size, and a LoRA update's rank (Σrᵢ) is far below the "
                             "layer's, so the directions it would add are arbitrary (whatever null space the SVD "
                             "routine returns); use tsv, ties, dare or task_arithmetic")
        return self

    @field_validator("tasks")
    @classmethod
    def _two_tasks(cls, v: dict) -> dict:
        if len(v) < 2:
            raise ValueError(f"at least 2 tasks are needed to explore trade-offs, got {len(v)}")
        bad = [t for t in v if not t.strip() or any(ch in t for ch in ",:=\n\r\t") or t != t.strip()]
        if bad:
            raise ValueError(f"task name {bad[0]!r} must be non-empty without commas, colons, '=' or surrounding "
                             "spaces (they separate tasks on the command line and in share links)")
        return v

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if not 0 <= v < 2**32:
            raise ValueError("seed must be an integer in [0, 2**32)")
        return v

    @field_validator("budget", "batch_size")
    @classmethod
    def _positive(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and not 1 <= v <= 10**7:
            raise ValueError("must be a positive integer (at most 10**7)")
        return v

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"device {v!r} is not one of auto, cpu, cuda, cuda:N, mps")
        return v

    def with_method(self, method: str) -> "Spec":
        """The same spec merged by `method`: density, seed and LiNeS kept, other methods' parameters dropped."""
        m = self.merge
        fields = {"method": method, "density": m.density, "seed": m.seed, "lines": m.lines}
        reads = get_method(method).parameters
        fields.update({k: getattr(m, k) for k in OPTIONAL if k in reads})
        return self.model_copy(update={"merge": MergeSpec(**fields)})


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at location `loc` (walking nested models; task names are free)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if current is Spec and part == "tasks":
            current = "tasks"
            continue
        if current == "tasks":
            current = TaskSpec
            continue
        field = current.model_fields.get(part) if isinstance(current, type) else None
        if field is None:
            return []
        ann = field.annotation
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if current is None:
            return []
    return list(current.model_fields) if isinstance(current, type) else []


def _describe(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    # union members show up in the location as type names ('tuple[float, float]'): not keys
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p and p.endswith("]")))
    where = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(Spec, loc)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; valid keys: {', '.join(valid)}" if valid else "")
        return f"{source}: unknown key {where!r}{hint}"
    if err["type"] == "missing":
        return f"{source}: missing required key {where!r}"
    return f"{source}: {where}: {err['msg']}"


def parse_spec(data: Any, source: str = "spec") -> Spec:
    """Validate a spec mapping; raise SpecError with one line naming the key at fault."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_describe(exc, source)) from None


def load_spec(path: str | Path) -> tuple[Spec, Path]:
    """Read and validate a YAML spec; returns the spec and the directory its paths are relative to."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: spec file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:  # ValueError: e.g. a NUL byte
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"{p}: not valid YAML ({first})") from None
    except RecursionError:
        raise SpecError(f"{p}: not valid YAML (nested too deeply)") from None
    except OSError as exc:
        raise SpecError(f"{p}: cannot read it ({exc.strerror})") from None
    return parse_spec(data, str(p)), p.resolve().parent


def resolve(spec_dir: Path, path: str | None) -> Path | None:
    """A spec path made absolute against the spec's directory (user home expanded)."""
    if path is None:
        return None
    try:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (spec_dir / p).resolve()
    except (RuntimeError, ValueError, OSError) as exc:  # an unknown ~user, a NUL byte, a symlink loop
        raise SpecError(f"path {path!r} in the spec cannot be used ({exc})") from None
