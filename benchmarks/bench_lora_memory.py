"""Memory and time of merging LoRA experts (`model.experts_format: peft`) into a Llama-shaped bf16 model.

The base is bench_llm_memory.py's generated Llama shape (`--layers`: 20 is ≈1.0B parameters, the
default 6 is ≈0.39B, to fit this shared 2-core VM's minutes), written tensor by tensor; T = 3 peft
adapters (rank `--rank` on q, k, v, o, gate, up and down of every block, bf16 factors, peft's key
names and adapter_config.json) are generated beside it. Each method runs in a fresh subprocess: load
the base with transformers (family hf_causal_lm's loader), read the adapters, reset the peak RSS
(/proc/self/clear_refs, so the loader's own transient peak is not counted), then merge `--points`
points with `explorer.merging.lora.LoraMerger`, and read the peak (VmHWM).

Bar (issue #17): peak RSS ≤ base + adapters + one dense layer × T, where "base" is the RSS after
loading the model (the process with its base model), "adapters" the factors' bytes and "one dense
layer" the largest target tensor in float32. Writes benchmarks/results/lora_memory.{json,md}.

    .venv/bin/python benchmarks/bench_lora_memory.py [--layers 6] [--rank 16] [--out /tmp/lora-bench]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.publish import RESULTS, publish  # noqa: E402
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
METHODS = ("task_arithmetic", "ties", "dare", "consensus", "cart", "tsv")
MB = 2 ** 20


def generate_adapters(out: Path, layers: int, rank: int, experts: int = 3, seed: int = 0) -> None:
    """T peft adapter folders over the generated base: random bf16 factors of rank `rank`."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_llm_memory import llama_config

    config = llama_config(layers)
    shapes = {"self_attn.q_proj": (config.hidden_size, config.hidden_size),
              "self_attn.k_proj": (config.num_key_value_heads * config.hidden_size // config.num_attention_heads, config.hidden_size),
              "mlp.gate_proj": (config.intermediate_size, config.hidden_size),
              "mlp.down_proj": (config.hidden_size, config.intermediate_size)}
    shapes["self_attn.v_proj"] = shapes["self_attn.k_proj"]
    shapes["self_attn.o_proj"] = shapes["self_attn.q_proj"]
    shapes["mlp.up_proj"] = shapes["mlp.gate_proj"]
    for m in range(1, experts + 1):
        folder = out / f"lora{m}"
        if (folder / "done").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(seed * 7919 + m)
        tensors = {}
        for layer in range(layers):
            for module in MODULES:
                rows, cols = shapes[module]
                name = f"base_model.model.model.layers.{layer}.{module}"
                tensors[f"{name}.lora_A.weight"] = (torch.randn(rank, cols, generator=g) / cols ** 0.5).to(torch.bfloat16)
                tensors[f"{name}.lora_B.weight"] = (torch.randn(rows, rank, generator=g) * 0.002).to(torch.bfloat16)
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        (folder / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "use_rslora": False,
            "target_modules": [m.split(".")[-1] for m in MODULES], "bias": "none", "use_dora": False}))
        (folder / "done").write_text("ok\n")
        print(f"generated {folder}", flush=True)


def vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(method: str, out: Path, points: int) -> dict:
    """One method measured in this (fresh) process."""
    import torch

    sys.path.insert(0, str(ROOT))
    from explorer.experiment.families.hf_causal_lm import load_model
    from explorer.merging.lora import DensifiedAdapter, LoraAdapter, LoraMerger, route
    from explorer.merging.methods.registry import merge_parameters
    from explorer.merging.preprocessed import preprocessed_experts
    from explorer.merging.safetensors_file import SafetensorsCheckpoint

    torch.set_num_threads(2)
    base = SafetensorsCheckpoint(out / "base")
    keys = [k for k, e in base.entries.items() if e.dtype.is_floating_point]
    start = time.perf_counter()
    model = load_model(out / "base", torch.device("cpu"))
    load_s = time.perf_counter() - start
    with torch.no_grad():  # every page of the model resident (transformers may leave them mapped, untouched)
        for p in model.parameters():
            float(p.view(-1)[::1024].float().sum())
    rss_loaded = vm("VmRSS")
    adapters = [LoraAdapter(d) for d in sorted(out.glob("lora*"))]
    params = merge_parameters({"method": method})
    how = route(params, adapters, base, keys)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS: the loader's transient peak is not ours
    rss_start = vm("VmRSS")
    extra = {}
    if how == "preprocess":  # what family hf_causal_lm does: τᵢ′ once into the cache, then streamed merges
        folder = out / "preprocessed" / method
        shutil.rmtree(folder, ignore_errors=True)
        begin = time.perf_counter()
        targets = [k for k in keys if any(k in a.factors for a in adapters)]
        experts = preprocessed_experts(base, [DensifiedAdapter(base, a) for a in adapters], targets, params, folder,
                                       method, log=lambda m: None, depth_keys=keys, merged_only=True)
        extra = {"preprocess_seconds": time.perf_counter() - begin, "preprocess_peak_rss": vm("VmHWM"),
                 "preprocessed_bytes": sum(p.stat().st_size for p in folder.glob("*.safetensors"))}
        Path("/proc/self/clear_refs").write_text("5")
        merger = LoraMerger(model, base, adapters, keys, params, log=lambda m: None, preprocessed=experts)
    else:
        merger = LoraMerger(model, base, adapters, keys, params, log=lambda m: None)
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(points):
        c = rng.uniform(0.0, 1.0, len(adapters))
        begin = time.perf_counter()
        merger.apply(c)
        seconds.append(time.perf_counter() - begin)
    peak = vm("VmHWM")  # before the check below, which holds whole tensors
    targets = sorted({k for a in adapters for k in a.factors})
    largest = max(base.entries[k].numel for k in targets)
    if how == "preprocess":  # the chunked read-back merged what one whole-tensor read would (largest target)
        key = max(targets, key=lambda k: base.entries[k].numel)
        want = base.read(key).float() * (1.0 - float(c.sum()))
        for ck, ci in zip(experts, c):
            want += float(ci) * ck.read(key).float()
        got = dict(model.named_parameters())[key].detach().float()
        extra["readback_max_error_in_bf16_steps"] = float(((got - want).abs() / (want.abs().clamp_min(1e-30) * 2 ** -7)).max())
    return {"method": method, "base_bytes": base.nbytes(keys), "rss_loaded": rss_loaded, "rss_start": rss_start,
            "peak_rss": peak, "adapter_bytes": sum(a.nbytes for a in adapters), "experts": len(adapters),
            "dense_layer_bytes": largest * 4, "targets": len(targets), "load_seconds": load_s, "route": how,
            "seconds_per_point": seconds, "describe": merger.describe(), "load_average": os.getloadavg(), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6, help="6 layers: 0.39B parameters; 20: 1.01B")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--points", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/lora-bench"))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated merge methods")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown from lora_memory.json")
    args = parser.parse_args()
    if args.report_only:
        write_report(json.loads((RESULTS / "lora_memory.json").read_text()), args.layers, args.rank)
        return
    if args.child:
        print(json.dumps(child(args.child, args.out, args.points)))
        return
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_llm_memory import generate

    generate(args.out, args.layers, experts=0)
    generate_adapters(args.out, args.layers, args.rank)
    runs = []
    for method in args.methods.split(","):
        proc = subprocess.run([sys.executable, __file__, "--child", method, "--out", str(args.out),
                               "--points", str(args.points)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{method}: {proc.stderr.strip().splitlines()[-1]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    write_report(runs, args.layers, args.rank)


def write_report(runs: list[dict], layers: int, rank: int) -> None:
    """benchmarks/results/lora_memory.{json,md} from the children's numbers."""
    r0 = runs[0]
    lines = [f"# LoRA merge memory: Llama-shaped bf16 base of {r0['base_bytes'] / 1e9:.2f} GB ({layers} layers), "
             f"{r0['experts']} adapters of rank {rank} on {r0['targets']} tensors",
             "",
             f"adapters {r0['adapter_bytes'] / MB:.1f} MiB in all; one dense layer (largest target, float32) "
             f"{r0['dense_layer_bytes'] / MB:.1f} MiB; RSS with the base loaded {r0['rss_loaded'] / MB:.0f} MiB "
             f"(the same model's full experts would be {r0['experts']} × {r0['base_bytes'] / MB:.0f} MiB on disk, "
             f"and their task vectors that much in RAM in resident mode)",
             "",
             "| method | route | peak RSS while merging | bar: base + adapters + dense layer × T | "
             "peak − RSS with base loaded | s per point | merging within bar | once: preprocessing peak RSS, s, disk "
             "| preprocessing within bar |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        bar = r["rss_loaded"] + r["adapter_bytes"] + r["dense_layer_bytes"] * r["experts"]
        r["bar"] = bar
        r["ok"] = r["peak_rss"] <= bar
        once, pre_ok = "—", "—"
        if "preprocess_peak_rss" in r:
            once = (f"{r['preprocess_peak_rss'] / MB:.0f} MiB, {r['preprocess_seconds']:.0f} s, "
                    f"{r['preprocessed_bytes'] / 1e9:.2f} GB")
            pre_ok = "yes" if r["preprocess_peak_rss"] <= bar else "NO"
        lines.append(f"| {r['method']} | {r['route']} | {r['peak_rss'] / MB:.0f} MiB | {bar / MB:.0f} MiB | "
                     f"{(r['peak_rss'] - r['rss_loaded']) / MB:.0f} MiB | {np.median(r['seconds_per_point']):.2f} | "
                     f"{'yes' if r['ok'] else 'NO'} | {once} | {pre_ok} |")
    lines += ["", "The merging peak is measured from the end of the preprocessing in the same process: it includes "
              "what the allocator kept from it. Chunked read-back checked against whole-tensor reads: max error "
              + ", ".join(f"{r['method']} {r['readback_max_error_in_bf16_steps']:.2f}" for r in runs
                          if "readback_max_error_in_bf16_steps" in r) + " bf16 steps.", ""]
    lines += [*(f"{r['method']}: {r['describe']}; load average {tuple(round(x, 1) for x in r['load_average'])}"
                for r in runs)]
    publish("lora_memory", runs, lines)


if __name__ == "__main__":
    main()
