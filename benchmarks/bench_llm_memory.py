"""Memory and time of merging a ≈1B-parameter Llama-shaped model (bf16) with 3 experts.

Generates, once, under cache/llm-bench/ a random-initialised Llama-shaped base (≈1.0B parameters,
bf16, sharded safetensors, HF folder) and 3 "experts" (base + small random task vectors), written
tensor by tensor so generation itself never holds a model in memory. Then, each in a fresh
subprocess so that peak RSS (ru_maxrss) belongs to one measurement:

- `read-warm` / `read-cold`: read the experts' tensors once (the task vectors' sources) from the
  page cache / after dropping these files from it (posix_fadvise DONTNEED);
- `resident` / `streaming`: load the base with transformers (family hf_causal_lm's loader), build
  the merger in that mode, merge at 3 coefficient vectors; streaming points are merged cold
  (files dropped from the page cache before each point), the worst case.

Bars (issue #11): resident peak RSS ≤ 1.2 × (base + Σ task vectors) + 1 GB, streaming ≤ 2.5 ×
base; time per point ≤ 2 × a warm read of the task vectors (resident), ≤ 1.5 × a cold read
(streaming). Writes benchmarks/results/llm_memory.{json,md}.

    .venv/bin/python benchmarks/bench_llm_memory.py [--layers 20] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "cache" / "llm-bench"
RESULTS = ROOT / "benchmarks" / "results"
GB = 1e9


def llama_config(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                       tie_word_embeddings=False, torch_dtype="bfloat16")


def generate(out: Path, layers: int, experts: int = 3, seed: int = 0) -> None:
    """Base and experts as HF folders, one tensor generated and written at a time."""
    import torch
    from transformers import LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from explorer.export_hf import SafetensorsStreamWriter, plan_shards
    from explorer.llm_zoo import char_tokenizer
    from explorer.streaming import TensorEntry

    config = llama_config(layers)
    with torch.device("meta"):
        meta = LlamaForCausalLM(config)
    shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    entries = {k: TensorEntry(Path("-"), 0, int(np.prod(s)) * 2, torch.bfloat16, s) for k, s in shapes.items()}
    order = list(shapes)
    shards = plan_shards(entries, order, 1 << 30)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    tok = char_tokenizer()
    for m in range(experts + 1):
        folder = out / ("base" if m == 0 else f"expert{m}")
        if (folder / "done").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(folder)
        tok.save_pretrained(folder)
        for i, keys in enumerate(shards):
            w = SafetensorsStreamWriter(folder / names[i], [(k, torch.bfloat16, shapes[k]) for k in keys], {"format": "pt"})
            for k in keys:
                g = torch.Generator().manual_seed(seed * 7919 + order.index(k))
                t = torch.randn(shapes[k], generator=g) * 0.02
                if k.endswith("norm.weight"):
                    t = torch.ones(shapes[k])
                if m:
                    g.manual_seed(seed * 7919 + 1_000_003 * m + order.index(k))
                    t += torch.randn(shapes[k], generator=g) * 0.002  # a task vector ~10% of the weights
                w.append(k, t.to(torch.bfloat16))
                del t
            w.close()
        (folder / "model.safetensors.index.json").write_text(json.dumps({
            "metadata": {"total_size": sum(e.nbytes for e in entries.values())},
            "weight_map": {k: names[i] for i, keys in enumerate(shards) for k in keys}}))
        (folder / "done").write_text("ok\n")
        print(f"generated {folder}", flush=True)


def drop_cache(folders: list[Path]) -> None:
    """Evict these files from the OS page cache (only theirs), so the next read comes from disk."""
    for folder in folders:
        for f in folder.glob("*.safetensors"):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def child(kind: str, out: Path, points: int) -> dict:
    """One measurement in this (fresh) process; returns numbers as a dict."""
    import torch

    sys.path.insert(0, str(ROOT))
    from explorer.families.hf_causal_lm import load_model
    from explorer.streaming import CHUNK, SafetensorsCheckpoint, StreamingMerger

    torch.set_num_threads(2)
    base_dir = out / "base"
    expert_dirs = sorted(out.glob("expert*"))
    base = SafetensorsCheckpoint(base_dir)
    experts = [SafetensorsCheckpoint(d) for d in expert_dirs]
    keys = [k for k, e in base.entries.items() if e.dtype.is_floating_point]
    result = {"kind": kind, "base_bytes": base.nbytes(keys), "task_vector_bytes": sum(e.nbytes(keys) for e in experts)}
    if kind.startswith("read"):
        if kind == "read-cold":
            drop_cache(expert_dirs)
        start = time.perf_counter()
        buf = {}
        for ex in experts:
            for k in keys:
                n = ex.entries[k].numel
                for s in range(0, n, CHUNK):
                    m = min(n, s + CHUNK) - s
                    b = buf.get((ex.entries[k].dtype, m))
                    if b is None:
                        b = buf[(ex.entries[k].dtype, m)] = torch.empty(m, dtype=ex.entries[k].dtype)
                    ex.read_into(k, b, s)
        result["seconds"] = time.perf_counter() - start
    else:
        result["rss_before_load"] = peak_rss()
        start = time.perf_counter()
        model = load_model(base_dir, torch.device("cpu"))
        result["load_seconds"] = time.perf_counter() - start
        result["rss_after_load"] = peak_rss()
        start = time.perf_counter()
        merger = StreamingMerger(model, base, experts, keys, device="cpu", mode=kind, log=lambda m: None)
        result["setup_seconds"] = time.perf_counter() - start
        result["mode"] = merger.mode
        result["describe"] = merger.describe()
        times = []
        rng = np.random.default_rng(0)
        for _ in range(points):
            c = rng.uniform(0.0, 1.0, len(experts))
            if kind == "streaming":
                drop_cache([base_dir, *expert_dirs])
            start = time.perf_counter()
            merger.apply(c)
            times.append(time.perf_counter() - start)
        result["point_seconds"] = times
        # the merge is real: one tensor against a float64 reference
        k = keys[len(keys) // 2]
        ref = base.read(k).double()
        ref = ref + sum(float(ci) * (ex.read(k).double() - ref) for ci, ex in zip(c, experts))
        got = model.state_dict()[k].double()
        result["max_abs_error_vs_float64"] = float((got - ref).abs().max())
        result["bf16_half_ulp_bound"] = float(ref.abs().max()) * 2 ** -8
    result["peak_rss"] = peak_rss()
    return result


def run_child(kind: str, out: Path, points: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--out", str(out), "--points", str(points)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=20, help="20 layers: 1.01B parameters")
    parser.add_argument("--points", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--only", choices=["streaming"], help="measure only the cold read and streaming (no results file)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.out, args.points)))
        return
    start = time.perf_counter()
    generate(args.out, args.layers)
    print(f"checkpoints ready in {time.perf_counter() - start:.0f} s", flush=True)
    if args.generate_only:
        return
    runs = {}
    if args.only == "streaming":
        for kind in ("read-cold", "streaming"):
            runs[kind] = run_child(kind, args.out, args.points)
        ratio = float(np.median(runs["streaming"]["point_seconds"])) / runs["read-cold"]["seconds"]
        print(f"streaming: {runs['streaming']['point_seconds']} s per point, cold read {runs['read-cold']['seconds']:.1f} s, "
              f"ratio {ratio:.2f}; peak RSS {runs['streaming']['peak_rss'] / GB:.2f} GB")
        return
    for kind in ("read-warm", "read-cold", "resident", "streaming", "read-warm"):
        runs[kind] = run_child(kind, args.out, args.points)
        print(kind, json.dumps(runs[kind]), flush=True)
    base_b, tv_b = runs["resident"]["base_bytes"], runs["resident"]["task_vector_bytes"]
    res, stream = runs["resident"], runs["streaming"]
    warm, cold = runs["read-warm"]["seconds"], runs["read-cold"]["seconds"]
    rows = [
        ("resident peak RSS", res["peak_rss"], 1.2 * (base_b + tv_b) + 1e9, "1.2 × (base + Σ τ) + 1 GB"),
        ("streaming peak RSS", stream["peak_rss"], 2.5 * base_b, "2.5 × base"),
        ("resident time per point", float(np.median(res["point_seconds"])), 2 * warm, "2 × warm read of τ"),
        ("streaming time per point (cold)", float(np.median(stream["point_seconds"])), 1.5 * cold, "1.5 × cold read of τ"),
    ]
    summary = {
        "parameters": base_b // 2, "base_bytes": base_b, "task_vector_bytes": tv_b,
        "read_warm_seconds": warm, "read_cold_seconds": cold, "runs": runs,
        "bars": [{"what": w, "measured": m, "bound": b, "formula": f, "ok": bool(m <= b)} for w, m, b, f in rows],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llm_memory.json").write_text(json.dumps(summary, indent=2) + "\n")
    fmt = lambda what, v: f"{v / GB:.2f} GB" if "RSS" in what else f"{v:.1f} s"  # noqa: E731
    lines = [f"# Merge memory, {base_b // 2 / 1e9:.2f}B-parameter Llama-shaped model, bf16, 3 experts",
             "", f"base {base_b / GB:.2f} GB, Σ task vectors {tv_b / GB:.2f} GB; reading them once: "
             f"{warm:.1f} s warm, {cold:.1f} s cold", "",
             "| what | measured | bound | formula | ok |", "|---|---|---|---|---|"]
    lines += [f"| {w} | {fmt(w, m)} | {fmt(w, b)} | {f} | {'yes' if m <= b else 'NO'} |" for w, m, b, f in rows]
    lines += ["", f"resident: {res['describe']}", f"streaming: {stream['describe']}",
              f"load of the base with transformers: {res['load_seconds']:.1f} s, RSS after load "
              f"{res['rss_after_load'] / GB:.2f} GB; merge error vs float64: {res['max_abs_error_vs_float64']:.2e} "
              f"(half a bf16 ulp of the largest entry: {res['bf16_half_ulp_bound']:.2e})"]
    (RESULTS / "llm_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.keep:
        import shutil

        shutil.rmtree(args.out)


if __name__ == "__main__":
    main()
