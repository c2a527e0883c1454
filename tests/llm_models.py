"""Tiny real language models for the LLM tests: a Llama with a character tokenizer, a base trained
a few steps on mixed text and experts fine-tuned from it on one skill each, saved as Hugging Face
folders (sharded safetensors). Built on the CPU in seconds; nothing is downloaded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from explorer.demo.llm_zoo import char_tokenizer, save_folder, tiny_llama

SKILL_TEXT = {
    "upper": [f"up {w}={w.upper()}\n" for w in ("ab", "cd", "ef", "gh", "ij", "kl")],
    "reverse": [f"rev {w}={w[::-1]}\n" for w in ("ab", "cd", "ef", "gh", "ij", "kl")],
    "add": [f"add {a}+{b}={a + b}\n" for a, b in ((1, 2), (3, 4), (2, 5), (6, 1), (4, 4), (7, 2))],
}


def train(model, tok, texts: list[str], steps: int, lr: float, seed: int) -> None:
    """Plain next-token training (AdamW) on `texts`, in float32."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = [texts[int(i)] for i in torch.randint(len(texts), (8,), generator=gen)]
        enc = tok(batch, return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def build(out: Path, skills=("upper", "reverse"), dtype=torch.bfloat16, hidden: int = 32, layers: int = 2,
          shard: str | int = "40KB", steps: int = 30) -> dict[str, Path]:
    """Folders `base` and one per skill under `out`; returns {name: folder}."""
    tok = char_tokenizer()
    base = tiny_llama(len(tok), hidden=hidden, layers=layers, heads=2, intermediate=2 * hidden, seed=0)
    mixed = [t for s in SKILL_TEXT.values() for t in s[:2]]
    train(base, tok, mixed, steps, 3e-3, seed=0)
    folders = {"base": save_folder(base.to(dtype), tok, out / "base", max_shard_size=shard)}
    for i, skill in enumerate(skills):
        expert = tiny_llama(len(tok), hidden=hidden, layers=layers, heads=2, intermediate=2 * hidden, seed=0)
        expert.load_state_dict({k: v.float() for k, v in base.state_dict().items()})
        train(expert, tok, SKILL_TEXT[skill], steps, 3e-3, seed=i + 1)
        folders[skill] = save_folder(expert.to(dtype), tok, out / skill, max_shard_size=shard)
    return folders


def cached_build(tmp_path_factory, name: str = "tiny", **kwargs) -> dict[str, Path]:
    """`build` once per test session (several test modules use the same tiny models)."""
    root = tmp_path_factory.getbasetemp() / f"llm-{name}"
    done = root / "done.json"
    if not done.exists():
        folders = build(root, **kwargs)
        done.write_text(json.dumps({k: str(v) for k, v in folders.items()}))
    return {k: Path(v) for k, v in json.loads(done.read_text()).items()}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def spec_text(base: str, experts: dict[str, str], data: dict[str, str], extra_model: str = "") -> str:
    tasks = "".join(
        f"  {name}:\n    checkpoint: {folder}\n    evaluator: explorer.lm_suite:evaluate\n"
        f"    params: {{data: {data[name]}, metric: exact_match, batch_size: 4}}\n"
        for name, folder in experts.items()
    )
    return (f"name: tiny-llm\nstore: store.sqlite\nmodel:\n  family: hf_causal_lm\n  base: {base}\n{extra_model}"
            f"tasks:\n{tasks}budget: 8\nseed: 0\ndevice: cpu\n")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and on a shared machine, far faster than on two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, or of all shards in a folder."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def assert_merge_of(merged: dict[str, torch.Tensor], root: Path, c, experts=("upper", "reverse")) -> None:
    """`merged` is θ₀ + Σ cᵢ τᵢ computed in float64 and rounded once to the base's dtype."""
    base = weights(root / "base")
    taus = [weights(root / e) for e in experts]
    assert set(merged) == set(base)
    for k, b in base.items():
        ref = b.double() + sum(ci * (t[k].double() - b.double()) for ci, t in zip(c, taus))
        assert merged[k].dtype == b.dtype
        assert torch.allclose(merged[k].double(), ref, rtol=2 ** -7, atol=1e-6), k
