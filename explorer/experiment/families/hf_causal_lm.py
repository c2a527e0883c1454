"""`model.family: hf_causal_lm`: Hugging Face causal language models, merged in place.

The base and every expert are Hugging Face model folders (config.json, tokenizer files, single or
sharded safetensors). The base is loaded once with transformers from its local path only
(`local_files_only=True`: nothing is downloaded) in the checkpoint's own dtype; merges are
written into that model by `explorer.merging.streaming.StreamingMerger`, which reads θ₀ and the experts in
their own dtype (resident or streaming, chosen from free memory). Checks that a merge makes sense
come first and each names the folder at fault in one line: a folder that is not a model, an
architecture that differs from the base's, a tokenizer whose vocabulary differs. With
`model.experts_format: peft` the experts are LoRA adapter folders over the base, merged from their
factors by `explorer.merging.lora.LoraMerger` (exports add a merged adapter for task arithmetic).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from explorer.errors import CheckpointError, SpecError
from explorer.experiment.families.registry import register
from explorer.merging.devices import pick_device
from explorer.merging.hf_folder import write_merged_folder
from explorer.merging.lora import (
    ADAPTER_CONFIG,
    DensifiedAdapter,
    LoraAdapter,
    LoraMerger,
    check_adapter_folder,
    write_merged_adapter,
)
from explorer.merging.lora import route as lora_route
from explorer.merging.preprocessed import needs_preprocessing, preprocessed_experts
from explorer.merging.safetensors_file import SafetensorsCheckpoint
from explorer.merging.streaming import StreamingMerger

#: config.json fields that must agree between the base and an expert for their weights to mix.
ARCHITECTURE_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "intermediate_size", "tie_word_embeddings")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def read_config(folder: Path, what: str) -> dict:
    """The folder's config.json, or a one-line error saying what the folder lacks."""
    if not folder.is_dir():
        raise CheckpointError(f"{what} {folder}: family hf_causal_lm expects a Hugging Face model folder "
                              "(config.json, tokenizer, safetensors)")
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{what} {folder}: no config.json (not a Hugging Face model folder)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable config ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: unreadable config (not a mapping)")
    return config


def check_same_architecture(base: dict, other: dict, other_name: str, base_name: str) -> None:
    """Refuse an expert of another architecture before any tensor is compared."""
    for field in ARCHITECTURE_FIELDS:
        a, b = base.get(field), other.get(field)
        if a != b:
            raise CheckpointError(f"{other_name}: config.json has {field} = {b!r}; the base {base_name} has {a!r}")


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{folder}: tokenizer could not be loaded ({str(exc).splitlines()[0][:200]})") from None


def tokenizer_difference(base, other) -> str | None:
    """A short phrase naming how two tokenizers differ (vocabulary, special tokens), or None."""
    a, b = base.get_vocab(), other.get_vocab()
    if a != b:
        only_b = sorted((i, t) for t, i in b.items() if a.get(t) != i)
        only_a = sorted((i, t) for t, i in a.items() if b.get(t) != i)
        if only_b:
            i, tok = only_b[0]
            where = f"id {a[tok]} in the base" if tok in a else "absent from the base"
            return f"vocabulary differs ({len(b)} tokens vs {len(a)}): token {tok!r} has id {i} there, {where}"
        i, tok = only_a[0]
        return f"vocabulary differs ({len(b)} tokens vs {len(a)}): the base's token {tok!r} (id {i}) is missing"
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        if getattr(base, attr, None) != getattr(other, attr, None):
            return f"{attr} is {getattr(other, attr, None)} there, {getattr(base, attr, None)} in the base"
    return None


def load_model(folder: Path, device):
    """The base model from its folder only, in the checkpoint's dtype, in eval mode on `device`."""
    import transformers
    from transformers import AutoModelForCausalLM

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype="auto")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{folder}: transformers could not load it ({str(exc).splitlines()[0][:300]})") from None
    finally:
        transformers.logging.set_verbosity(level)
        transformers.logging.enable_progress_bar()
    return model.to(device).eval()


@register("hf_causal_lm")
class HFCausalLM:
    """Hugging Face causal LMs (LlamaForCausalLM, MistralForCausalLM, ...) from local folders."""

    #: What `write_merged` writes, as named in exports' notes.
    artifact = "merged/"

    def folders(self, experiment) -> tuple[Path, list[Path]]:
        spec = experiment.spec
        return (experiment.path(spec.model.base),
                [experiment.path(spec.tasks[t].checkpoint) for t in experiment.tasks])

    def identity(self, experiment) -> str:
        """SHA-256 of the base's config and tokenizer files: they change what a merge computes and
        how it is evaluated, yet are not weights (the checkpoint hashes cover those)."""
        base_dir, expert_dirs = self.folders(experiment)
        h = hashlib.sha256()
        for name in ("config.json", "generation_config.json", *TOKENIZER_FILES, "special_tokens_map.json"):
            path = base_dir / name
            if path.is_file():
                h.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        if experiment.spec.model.experts_format == "peft":  # r, lora_alpha, use_rslora set each τᵢ's scale
            for folder in expert_dirs:
                h.update(ADAPTER_CONFIG.encode() + b"\0" + hashlib.sha256((folder / ADAPTER_CONFIG).read_bytes()).digest())
        return h.hexdigest()

    def check(self, experiment) -> None:
        """Configs and tokenizers of every expert against the base's (no weights are read)."""
        base_dir, expert_dirs = self.folders(experiment)
        base_config = read_config(base_dir, "model.base")
        base_tok = load_tokenizer(base_dir) if has_tokenizer(base_dir) else None
        if base_tok is None:
            raise CheckpointError(f"model.base {base_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
        peft = experiment.spec.model.experts_format == "peft"
        for task, folder in zip(experiment.tasks, expert_dirs):
            what = f"tasks.{task}.checkpoint"
            if peft:  # an adapter folder has no config.json: its factors are checked against the base's tensors
                check_adapter_folder(folder, what)
            else:
                check_same_architecture(base_config, read_config(folder, what), f"{what} {folder}", str(base_dir))
            if has_tokenizer(folder):
                diff = tokenizer_difference(base_tok, load_tokenizer(folder))
                if diff:
                    raise CheckpointError(f"{what} {folder}: tokenizer differs from the base's: {diff}")

    def load_engine(self, engine, experiment) -> None:
        """Fill the runner's Engine: the base model in place, a streaming merger over the experts."""
        spec = experiment.spec
        if spec.model.architecture:
            raise SpecError("model.architecture is not used by family 'hf_causal_lm' (config.json names it); remove it")
        self.check(experiment)
        base_dir, expert_dirs = self.folders(experiment)
        base = SafetensorsCheckpoint(base_dir, f"model.base {base_dir}")
        peft = spec.model.experts_format == "peft"
        experts = [(LoraAdapter if peft else SafetensorsCheckpoint)(d, f"tasks.{t}.checkpoint {d}")
                   for t, d in zip(experiment.tasks, expert_dirs)]
        prefix = spec.model.merge_prefix
        keys = [k for k, e in base.entries.items() if e.dtype.is_floating_point and (not prefix or k.startswith(prefix))]
        if not keys:
            where = f" under prefix {prefix!r}" if prefix else ""
            raise SpecError(f"the base checkpoint has no floating tensors{where} to merge")
        for ex in experts if peft else []:  # before the model is loaded: a wrong target fails fast
            ex.check_base(base, keys)
        engine.device = pick_device(experiment.device or spec.device)
        engine.model = load_model(base_dir, engine.device)
        params = experiment.merge_parameters()
        folder = experiment.cache_dir / experiment.key[:24]
        if peft:  # factors in memory (merging/lora.py routes: from the factors, per point, or τᵢ′ once)
            pre = None
            if lora_route(params, experts, base, keys) == "preprocess":  # θ₀ + sᵢBᵢAᵢ densified one tensor at a time;
                # only the targets move (τ = 0 elsewhere, and every method keeps a zero τ at zero)
                targets = [k for k in keys if any(k in ad.factors for ad in experts)]
                pre = preprocessed_experts(base, [DensifiedAdapter(base, ad) for ad in experts], targets, params,
                                           folder, experiment.key, log=_stderr, depth_keys=keys, merged_only=True)
            engine.merger = LoraMerger(engine.model, base, experts, keys, params, device=engine.device, log=_stderr,
                                       preprocessed=pre)
        else:
            if needs_preprocessing(params):  # τᵢ′ once, tensor by tensor, then plain task arithmetic over them
                experts = preprocessed_experts(base, experts, keys, params, folder, experiment.key, log=_stderr)
                params = {"method": "task_arithmetic", "preprocessed": True}
            engine.merger = StreamingMerger(engine.model, base, experts, keys, device=engine.device,
                                            mode=getattr(spec.model, "memory", "auto"), params=params)
        # θ₀ is never held as a state dict (the merger reads it from its files): only its tensors' metadata
        engine.base = {k: torch.empty(e.shape, dtype=e.dtype, device="meta") for k, e in base.entries.items()}
        engine.task_vectors = None

    def write_merged(self, experiment, coefficients, out_dir: Path, via_inputs: bool = False) -> dict[str, Path]:
        """A merged Hugging Face folder (config and tokenizer copied, shards streamed to disk).
        The streaming merge already rounds as mergekit does, so `via_inputs` changes nothing."""
        base_dir, _ = self.folders(experiment)
        merger = experiment.engine.merger
        out = {"merged": write_merged_folder(merger, base_dir, coefficients, Path(out_dir) / "merged")}
        if isinstance(merger, LoraMerger) and merger.factor_level:  # plain task arithmetic: exactly one adapter too
            out["merged_adapter"] = write_merged_adapter(merger.experts, coefficients, Path(out_dir) / "merged-adapter",
                                                         base_model=str(base_dir))
        return out


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
