"""Peak memory of each merge method's one-time preprocessing on full-format experts of a Llama-shaped model.

A streamed model (`hf_causal_lm`) has its experts' τᵢ′ computed once, tensor by tensor, into the
preprocessed-experts cache (explorer/merging/preprocessed.py). The bar (issue #17): about one tensor's
T pieces (float32) above the process that holds the loaded base. The base and T = 3 experts are
bench_llm_memory.py's generated bf16 Llama shape (`--layers`; the vocabulary embedding and lm_head,
32000 × 2048, are the largest tensors at any depth, so one layer shows the peak); every task vector
is dense and full-rank (random), the hardest case for the SVD-based methods. Each method runs in a
fresh process: load the base with transformers (family hf_causal_lm's loader), reset the peak RSS,
preprocess, read the peak (VmHWM). Writes benchmarks/results/preprocess_memory.{json,md}.

    .venv/bin/python benchmarks/bench_preprocess_memory.py [--layers 1] [--out /tmp/preprocess-bench] [--methods tsv --keep]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.publish import RESULTS, publish  # noqa: E402
METHODS = ("ties", "dare", "consensus", "cart", "tsv")
MB = 2 ** 20


def child(method: str, out: Path) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from explorer.experiment.families.hf_causal_lm import load_model
    from explorer.merging.methods.registry import merge_parameters
    from explorer.merging.preprocessed import preprocessed_experts
    from explorer.merging.safetensors_file import SafetensorsCheckpoint

    from benchmarks.bench_lora_memory import vm  # peak and current RSS from /proc/self/status

    torch.set_num_threads(2)
    base = SafetensorsCheckpoint(out / "base")
    experts = [SafetensorsCheckpoint(d) for d in sorted(out.glob("expert*"))]
    keys = [k for k, e in base.entries.items() if e.dtype.is_floating_point]
    model = load_model(out / "base", torch.device("cpu"))
    with torch.no_grad():
        for p in model.parameters():
            float(p.view(-1)[::1024].float().sum())
    rss_loaded = vm("VmRSS")
    params = merge_parameters({"method": method})
    folder = out / "preprocessed" / method
    shutil.rmtree(folder, ignore_errors=True)
    Path("/proc/self/clear_refs").write_text("5")
    begin = time.perf_counter()
    preprocessed_experts(base, experts, keys, params, folder, method, log=lambda m: None)
    seconds = time.perf_counter() - begin
    largest = max(base.entries[k].numel for k in keys)
    return {"method": method, "rss_loaded": rss_loaded, "peak_rss": vm("VmHWM"), "seconds": seconds,
            "experts": len(experts), "largest_bytes": largest * 4, "base_bytes": base.nbytes(keys),
            "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/preprocess-bench"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--keep", action="store_true", help="keep the other methods' rows of the last run")
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown from the json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.out)))
        return
    if args.report_only:
        write_report(json.loads((RESULTS / "preprocess_memory.json").read_text()), args.layers)
        return
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_llm_memory import generate

    generate(args.out, args.layers, experts=3)
    runs = []
    if args.keep and (RESULTS / "preprocess_memory.json").exists():
        runs = [r for r in json.loads((RESULTS / "preprocess_memory.json").read_text())
                if r["method"] not in args.methods.split(",")]
    for method in args.methods.split(","):
        proc = subprocess.run([sys.executable, __file__, "--child", method, "--out", str(args.out)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{method}: {proc.stderr.strip().splitlines()[-1]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    write_report(runs, args.layers)


def write_report(runs: list[dict], layers: int) -> None:
    """benchmarks/results/preprocess_memory.{json,md} from the children's numbers."""
    r0 = runs[0]
    lines = [f"# One-time preprocessing of full experts: Llama-shaped bf16 base of {r0['base_bytes'] / 1e9:.2f} GB "
             f"({layers} layers), {r0['experts']} experts, dense full-rank task vectors", "",
             f"largest tensor in float32 {r0['largest_bytes'] / MB:.0f} MiB; bar: RSS with the base loaded + "
             f"{r0['experts']} × that", "",
             "| method | peak RSS − RSS with base loaded | bar (T × largest tensor) | ratio | seconds | within |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        extra, bar = r["peak_rss"] - r["rss_loaded"], r["largest_bytes"] * r["experts"]
        lines.append(f"| {r['method']} | {extra / MB:.0f} MiB | {bar / MB:.0f} MiB | {extra / bar:.2f} | "
                     f"{r['seconds']:.0f} | {'yes' if extra <= bar else 'NO'} |")
    lines += ["", *(f"{r['method']}: load average {tuple(round(x, 1) for x in r['load_average'])}" for r in runs)]
    publish("preprocess_memory", runs, lines)


if __name__ == "__main__":
    main()
