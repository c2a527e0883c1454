"""Memory and time of merging a ≈1B-parameter Llama-shaped model (bf16) with 3 experts.

Generates, once, under cache/llm-bench/ a random-initialised Llama-shaped base (≈1.0B parameters,
bf16, sharded safetensors, HF folder) and 3 "experts" (base + small random task vectors), written
tensor by tensor so generation itself never holds a model in memory. Then each mode runs in a
fresh subprocess, so that peak RSS (ru_maxrss) belongs to that mode: load the base with
transformers (family hf_causal_lm's loader), build the merger, merge one first point, then
alternate, round by round and in a rotating order, the reference reads and merge points, so that
disk speed and the machine's load (a shared 2-core VM) weigh on both sides of each ratio alike:

- resident: a warm read of the experts' files (page cache, checked fully cached), one thread per
  expert, vs a merge point;
- streaming: with the four checkpoints dropped from the page cache before each (fadvise
  DONTNEED, checked with fincore), a cold read of the experts' files and a cold read of θ₀'s and
  the experts' files (what a point reads), one thread per checkpoint, vs a cold merge point.

Bars (issue #11): resident peak RSS ≤ 1.2 × (base + Σ task vectors) + 1 GB, streaming ≤ 2.5 ×
base; time per point ≤ 2 × a read of the task vectors (resident, warm), ≤ 1.5 × a cold read of
them (streaming); medians over the rounds. Writes benchmarks/results/llm_memory.{json,md}.

    .venv/bin/python benchmarks/bench_llm_memory.py [--layers 20] [--rounds 5] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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
    from explorer.demo.llm_zoo import char_tokenizer
    from explorer.merging.hf_folder import SafetensorsStreamWriter, plan_shards
    from explorer.merging.safetensors_file import TensorEntry

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


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def drop_cache(folders: list[Path]) -> None:
    """Evict these files from the OS page cache (only theirs), so the next read comes from disk."""
    for folder in folders:
        for f in shards(folder):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cached_fraction(folders: list[Path]) -> float | None:
    """Share of these files' bytes in the page cache (util-linux fincore), None without fincore."""
    files = [str(f) for d in folders for f in shards(d)]
    if not shutil.which("fincore"):
        return None
    proc = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", *files],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    pairs = [tuple(int(v) for v in line.split()) for line in proc.stdout.splitlines() if line.strip()]
    return sum(r for r, _ in pairs) / max(1, sum(z for _, z in pairs))


def read_folders(folders: list[Path], pool: ThreadPoolExecutor, forget: bool = False, block: int = 8 << 20) -> float:
    """Seconds to read these checkpoints' files once, one thread per checkpoint (as the merger reads
    its sources), each file front to back in `block`-byte preads. `forget`: drop each block from the
    page cache once read, as the streaming merger does (on this VM filling the cache with fresh pages
    costs more than the disk: a cold read that keeps them is slower than one that does not)."""
    def read_one(folder: Path) -> int:
        buf = memoryview(bytearray(block))
        total = 0
        for f in shards(folder):
            fd = os.open(f, os.O_RDONLY)
            try:
                offset = 0
                while (got := os.preadv(fd, [buf], offset)) > 0:
                    if forget:
                        os.posix_fadvise(fd, offset, got, os.POSIX_FADV_DONTNEED)
                    offset += got
                total += offset
            finally:
                os.close(fd)
        return total

    start = time.perf_counter()
    list(pool.map(read_one, folders))
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (the machine is shared: wall time also
    counts waiting for a core, CPU time does not)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def child(kind: str, out: Path, rounds: int) -> dict:
    """One mode measured in this (fresh) process; returns numbers as a dict."""
    import torch

    sys.path.insert(0, str(ROOT))
    from explorer.experiment.families.hf_causal_lm import load_model
    from explorer.merging.safetensors_file import SafetensorsCheckpoint
    from explorer.merging.streaming import StreamingMerger

    torch.set_num_threads(2)
    base_dir = out / "base"
    expert_dirs = sorted(out.glob("expert*"))
    base = SafetensorsCheckpoint(base_dir)
    experts = [SafetensorsCheckpoint(d) for d in expert_dirs]
    keys = [k for k, e in base.entries.items() if e.dtype.is_floating_point]
    result = {"kind": kind, "base_bytes": base.nbytes(keys), "task_vector_bytes": sum(e.nbytes(keys) for e in experts),
              "load_average_start": os.getloadavg()}
    pool = ThreadPoolExecutor(max_workers=len(experts) + 1, thread_name_prefix="bench-read")
    result["rss_before_load"] = peak_rss()
    start = time.perf_counter()
    model = load_model(base_dir, torch.device("cpu"))
    result["load_seconds"] = time.perf_counter() - start
    result["rss_after_load"] = peak_rss()
    start = time.perf_counter()
    merger = StreamingMerger(model, base, experts, keys, device="cpu", mode=kind, log=lambda m: None)
    result["setup_seconds"] = time.perf_counter() - start
    result["mode"] = merger.mode
    result["workers"] = merger.workers
    result["describe"] = merger.describe()
    rng = np.random.default_rng(0)
    everything = [base_dir, *expert_dirs]

    def point(cold: list[Path]) -> dict:
        c = rng.uniform(0.0, 1.0, len(experts))
        drop_cache(cold)
        cached = cached_fraction([base_dir])
        begin, cpu = time.perf_counter(), cpu_seconds()
        merger.apply(c)
        return {"seconds": time.perf_counter() - begin, "cpu_seconds": cpu_seconds() - cpu, "base_cached_before": cached}

    def read(folders: list[Path]) -> dict:
        if kind == "streaming":
            drop_cache(everything)
        else:
            read_folders(folders, pool)  # prime: every page cached before the warm read
        cached = cached_fraction(folders)
        cpu = cpu_seconds()
        seconds = read_folders(folders, pool, forget=kind == "streaming")
        return {"seconds": seconds, "cpu_seconds": cpu_seconds() - cpu, "cached_before": cached}

    if kind == "streaming":
        # the worst case, θ₀ from disk as well; then a point as a session sees it, right after another:
        # the experts from disk, θ₀ where the previous point left it (the merger drops the experts'
        # pages after use, so θ₀'s stay in the page cache)
        steps = {"read_experts": lambda: read(expert_dirs), "read_base_and_experts": lambda: read(everything),
                 "point_all_cold": lambda: point(everything), "point": lambda: point(expert_dirs)}
        units = [["read_experts"], ["read_base_and_experts"], ["point_all_cold", "point"]]
    else:
        steps = {"read_experts": lambda: read(expert_dirs), "point": lambda: point([])}
        units = [["read_experts"], ["point"]]
    first = steps["point"]()
    result["first_point_seconds"] = first["seconds"]
    names = list(steps)
    result["rounds"] = []
    for r in range(rounds):
        order = [n for unit in units[r % len(units):] + units[: r % len(units)] for n in unit]  # rotated
        row = {"order": order}
        for name in order:
            row[name] = steps[name]()
        result["rounds"].append(row)
        print(f"{kind} round {r + 1}/{rounds}: " + ", ".join(f"{n} {row[n]['seconds']:.2f} s" for n in names),
              file=sys.stderr, flush=True)
    result["load_average_end"] = os.getloadavg()
    # the merge is real: one tensor against a float64 reference
    c = merger.coefficients
    k = keys[len(keys) // 2]
    ref = base.read(k).double()
    ref = ref + sum(float(ci) * (ex.read(k).double() - ref) for ci, ex in zip(c, experts))
    got = model.state_dict()[k].double()
    result["max_abs_error_vs_float64"] = float((got - ref).abs().max())
    result["bf16_half_ulp_bound"] = float(ref.abs().max()) * 2 ** -8
    result["peak_rss"] = peak_rss()
    return result


def median(run: dict, step: str, what: str = "seconds") -> float:
    return float(np.median([row[step][what] for row in run["rounds"]]))


def run_child(kind: str, out: Path, rounds: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--out", str(out), "--rounds", str(rounds)],
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(runs: dict) -> tuple[dict, list[str]]:
    """Bars and the markdown lines from the two modes' runs."""
    res, stream = runs["resident"], runs["streaming"]
    base_b, tv_b = res["base_bytes"], res["task_vector_bytes"]
    warm, cold = median(res, "read_experts"), median(stream, "read_experts")
    cold_all = median(stream, "read_base_and_experts")
    rows = [
        ("resident peak RSS", res["peak_rss"], 1.2 * (base_b + tv_b) + 1e9, "1.2 × (base + Σ τ) + 1 GB"),
        ("streaming peak RSS", stream["peak_rss"], 2.5 * base_b, "2.5 × base"),
        ("resident time per point", median(res, "point"), 2 * warm, "2 × warm read of τ"),
        ("resident first point (after setup)", res["first_point_seconds"], 2 * warm, "2 × warm read of τ"),
        ("streaming time per point (τ cold)", median(stream, "point"), 1.5 * cold, "1.5 × cold read of τ"),
        ("streaming first point (τ cold)", stream["first_point_seconds"], 1.5 * cold, "1.5 × cold read of τ"),
        ("streaming point, θ₀ cold too (worst case)", median(stream, "point_all_cold"), 1.5 * cold,
         "1.5 × cold read of τ"),
    ]
    loads = [tuple(round(v, 1) for v in run[k]) for run in (res, stream) for k in ("load_average_start", "load_average_end")]
    summary = {
        "parameters": base_b // 2, "base_bytes": base_b, "task_vector_bytes": tv_b,
        "read_warm_seconds": warm, "read_cold_seconds": cold, "read_cold_base_and_experts_seconds": cold_all,
        "cpu_seconds": {f"{mode}_{step}": median(run, step, "cpu_seconds") for mode, run in runs.items()
                        for step in run["rounds"][0] if step != "order"},
        "ratios": {"resident_point_over_warm_read": median(res, "point") / warm,
                   "streaming_point_over_cold_read": median(stream, "point") / cold,
                   "streaming_all_cold_point_over_cold_read": median(stream, "point_all_cold") / cold,
                   "streaming_all_cold_point_over_cold_read_of_what_it_reads":
                       median(stream, "point_all_cold") / cold_all},
        "load_averages_1_5_15": loads, "runs": runs,
        "bars": [{"what": w, "measured": m, "bound": b, "formula": f, "ok": bool(m <= b)} for w, m, b, f in rows],
    }
    fmt = lambda what, v: f"{v / GB:.2f} GB" if "RSS" in what else f"{v:.2f} s"  # noqa: E731
    cached = [row["read_experts"]["cached_before"] for row in stream["rounds"]]
    lines = [f"# Merge memory, {base_b // 2 / 1e9:.2f}B-parameter Llama-shaped model, bf16, 3 experts",
             "", f"base {base_b / GB:.2f} GB, Σ task vectors {tv_b / GB:.2f} GB; medians over "
             f"{len(res['rounds'])} resident and {len(stream['rounds'])} streaming rounds, reads and points "
             "alternated in one process per mode; load average (1, 5, 15 min) at the start and end of each "
             f"mode: {', '.join(str(v) for v in loads)}", "",
             f"reading the experts' files once, one thread per expert: {warm:.2f} s warm, {cold:.2f} s cold; "
             f"θ₀'s and the experts' files cold (what a streaming point reads): {cold_all:.2f} s", "",
             "| what | measured | bound | formula | ok |", "|---|---|---|---|---|"]
    lines += [f"| {w} | {fmt(w, m)} | {fmt(w, b)} | {f} | {'yes' if m <= b else 'NO'} |" for w, m, b, f in rows]
    lines += ["", "| round | resident: warm read τ / point | streaming: cold read τ / cold read θ₀ + τ / "
              "point (τ cold) / point (all cold) |", "|---|---|---|"]
    for i in range(max(len(res["rounds"]), len(stream["rounds"]))):
        a = res["rounds"][i] if i < len(res["rounds"]) else None
        b = stream["rounds"][i] if i < len(stream["rounds"]) else None
        left = f"{a['read_experts']['seconds']:.2f} / {a['point']['seconds']:.2f} s" if a else ""
        right = (f"{b['read_experts']['seconds']:.2f} / {b['read_base_and_experts']['seconds']:.2f} / "
                 f"{b['point']['seconds']:.2f} / {b['point_all_cold']['seconds']:.2f} s" if b else "")
        lines.append(f"| {i + 1} | {left} | {right} |")
    base_cached = [row["point"]["base_cached_before"] for row in stream["rounds"]]
    share = lambda vs: ", ".join("n/a" if v is None else f"{v:.2f}" for v in vs)  # noqa: E731
    lines += ["", "streaming point with θ₀ cold too / cold read of what it reads (θ₀ + τ): "
              f"{summary['ratios']['streaming_all_cold_point_over_cold_read_of_what_it_reads']:.2f}; "
              f"page-cache share of the experts' files before each cold read: {share(cached)}; "
              f"of θ₀'s before each τ-cold point: {share(base_cached)}",
              "CPU seconds (medians, all threads): resident point "
              f"{median(res, 'point', 'cpu_seconds'):.2f} vs warm read of τ {median(res, 'read_experts', 'cpu_seconds'):.2f}; "
              f"streaming point (τ cold) {median(stream, 'point', 'cpu_seconds'):.2f}, θ₀ cold too "
              f"{median(stream, 'point_all_cold', 'cpu_seconds'):.2f} vs cold read of τ "
              f"{median(stream, 'read_experts', 'cpu_seconds'):.2f}, of θ₀ + τ "
              f"{median(stream, 'read_base_and_experts', 'cpu_seconds'):.2f}",
              f"resident: {res['describe']}; {res['workers']} arithmetic threads; setup (checks + page ownership) "
              f"{res['setup_seconds']:.1f} s",
              f"streaming: {stream['describe']}; setup {stream['setup_seconds']:.1f} s",
              f"load of the base with transformers: {res['load_seconds']:.1f} s, RSS after load "
              f"{res['rss_after_load'] / GB:.2f} GB; merge error vs float64: {res['max_abs_error_vs_float64']:.2e} "
              f"(half a bf16 ulp of the largest entry: {res['bf16_half_ulp_bound']:.2e})"]
    return summary, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=20, help="20 layers: 1.01B parameters")
    parser.add_argument("--rounds", type=int, default=4, help="read/point rounds per mode")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--only", choices=["resident", "streaming"], help="measure one mode (no results file)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.out, args.rounds)))
        return
    start = time.perf_counter()
    generate(args.out, args.layers)
    print(f"checkpoints ready in {time.perf_counter() - start:.0f} s", flush=True)
    if args.generate_only:
        return
    if args.only:
        run = run_child(args.only, args.out, args.rounds)
        print(json.dumps({k: v for k, v in run.items() if k != "rounds"}))
        return
    runs = {kind: run_child(kind, args.out, args.rounds) for kind in ("resident", "streaming")}
    summary, lines = report(runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llm_memory.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / "llm_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(args.out)


if __name__ == "__main__":
    main()
