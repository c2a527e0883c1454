"""The offline HTML explorer on the demos: file size, time to first plot, slider latency, agreement with `pick`.

For each demo (4 tasks: examples/demo.yaml; 8 tasks: examples/demo8.yaml on the store
`merge-explorer compare` wrote), writes the file as `merge-explorer export SPEC --html` does, opens
it from file:// in headless chromium with every other request aborted, sets 20 seeded random
preferences on the sliders and compares the page's choice with `ExploreResult.decide` (what
`pick` runs). Slider latency is measured in the page (performance.now around the update: the
decision, the chosen-merge panel, the chosen point on the plot, the link).

    python benchmarks/bench_html_explorer.py [--demos 4,8] [--preferences 20]

Prints a table and writes benchmarks/results/html_explorer.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS, VIEWPORT  # noqa: E402

DEMOS = {4: (ROOT / "examples" / "demo.yaml", None), 8: (ROOT / "examples" / "demo8.yaml", ROOT / "cache" / "compare8.sqlite")}


def run_demo(browser, spec: Path, store: Path | None, n_prefs: int, out_dir: Path) -> dict:
    from explorer.experiment.experiment import Experiment
    from explorer.html_explorer import write_explorer_html

    exp = Experiment.from_file(spec, store_path=store, read_only=True)
    result = exp.result()
    start = time.perf_counter()
    path, data = write_explorer_html(out_dir / f"{exp.spec.name}.html", exp, result)
    write_s = time.perf_counter() - start
    attempted: list[str] = []
    context = browser.new_context(viewport=VIEWPORT)
    context.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://")
                  else (attempted.append(r.request.url), r.abort()))
    context.set_offline(True)
    page = context.new_page()
    start = time.perf_counter()
    page.goto(path.as_uri(), wait_until="commit")
    page.wait_for_selector("#front .scatterlayer .trace", timeout=60_000)
    first_plot_s = time.perf_counter() - start
    tasks, rng, agree = result.tasks, np.random.default_rng(19), 0
    slider = lambda label: page.locator(f'input[type="range"][aria-label="{label}"]')  # noqa: E731
    for _ in range(n_prefs):
        for t in tasks:
            slider(f"Importance of {t}").fill(f"{rng.integers(1, 101) / 10:.1f}")
        minimums = {}
        for k, t in enumerate(tasks):
            s = data["sliders"][k]
            off = s["lo"] if result.senses[k] > 0 else s["hi"]
            target = s["lo"] + rng.uniform() * (s["hi"] - s["lo"]) if rng.uniform() < 0.35 else off
            slider(f"Minimum {t}").fill(repr(float(target)))
            v = float(slider(f"Minimum {t}").input_value())
            if abs(v - off) > s["step"] / 2:
                minimums[t] = v / s["scale"]
        weights = {t: float(slider(f"Importance of {t}").input_value()) for t in tasks}
        expected = result.decide(weights, minimums or None).index
        agree += int(page.locator("section.chosen").get_attribute("data-front-index")) == expected
    timings = page.evaluate("window.mergeExplorer.timings")[1:]
    context.close()
    return {"experiment": exp.spec.name, "tasks": len(tasks), "front_points": len(data["front"]["index"]),
            "file_mb": round(path.stat().st_size / 2**20, 2), "write_s": round(write_s, 2),
            "first_plot_s": round(first_plot_s, 2), "slider_moves": len(timings),
            "slider_median_ms": round(float(np.median(timings)), 2), "slider_p95_ms": round(float(np.percentile(timings, 95)), 2),
            "slider_max_ms": round(float(max(timings)), 2), "agree_with_pick": f"{agree}/{n_prefs}",
            "network_requests": len(attempted)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demos", default="4,8")
    ap.add_argument("--preferences", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "html_explorer.json"))
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            for n in (int(x) for x in args.demos.split(",")):
                spec, store = DEMOS[n]
                rows.append(run_demo(browser, spec, store, args.preferences, Path(tmp)))
                print(json.dumps(rows[-1]))
        finally:
            browser.close()
    record = {"measured": time.strftime("%Y-%m-%d %H:%M"), "load_average": [round(x, 2) for x in os.getloadavg()],
              "cpus": os.cpu_count(), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    keys = ["experiment", "tasks", "front_points", "file_mb", "first_plot_s", "slider_median_ms", "slider_p95_ms",
            "slider_max_ms", "agree_with_pick", "network_requests"]
    table = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    table += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    md = (f"Offline HTML explorer, {record['measured']}, load average {record['load_average']} on {record['cpus']} CPUs "
          f"(`python benchmarks/bench_html_explorer.py`)\n\n" + "\n".join(table) + "\n")
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0 if all(r["agree_with_pick"].split("/")[0] == r["agree_with_pick"].split("/")[1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
