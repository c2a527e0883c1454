"""Where a page load's time goes: the timeline of one load of the app, served as `./run.sh` serves it.

For each load (the first visitor after a start, then new visitors): when the websocket opened, when
the script's first and last messages arrived, when the largest message (the front's figure) came,
and when a plot trace was drawn; with `--profile`, the browser's main-thread time per script file
(Chrome DevTools' sampling profiler). `bench_page_load.py` is the measurement; this says why.

    python benchmarks/page_load_timeline.py [--loads 3] [--profile]
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_page_load import CHOSEN, CHROMIUM, CHROMIUM_FLAGS, PLOTS, server  # noqa: E402


def timeline(browser, url: str, profile: bool) -> dict:
    """Seconds from navigation to each step of one load in a fresh browser context."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    frames: list[tuple[str, float, int]] = []
    start = time.perf_counter()

    def on_socket(ws):
        frames.append(("open", time.perf_counter() - start, 0))
        ws.on("framereceived", lambda f: frames.append(("message", time.perf_counter() - start, len(f or b""))))

    page.on("websocket", on_socket)
    cdp = None
    if profile:
        cdp = context.new_cdp_session(page)
        cdp.send("Profiler.enable")
        cdp.send("Profiler.setSamplingInterval", {"interval": 500})
        cdp.send("Profiler.start")
    page.goto(url, wait_until="commit")
    page.wait_for_selector(PLOTS, timeout=120_000)
    drawn = time.perf_counter() - start
    page.wait_for_selector(CHOSEN, timeout=120_000)
    messages = [f for f in frames if f[0] == "message"]
    out = {"websocket open": next(f[1] for f in frames if f[0] == "open"), "first message": messages[0][1],
           "largest message (the figure)": max(messages, key=lambda f: f[2])[1], "last message": messages[-1][1],
           "plot drawn": drawn}
    if cdp is not None:
        prof = cdp.send("Profiler.stop")["profile"]
        nodes = {n["id"]: n["callFrame"] for n in prof["nodes"]}
        per_file = collections.Counter()
        for sample, dt in zip(prof["samples"], prof["timeDeltas"]):
            frame = nodes[sample]
            per_file[frame["url"].rsplit("/", 1)[-1] or frame["functionName"] or "(native)"] += dt / 1e6
        out["main thread, s per script"] = {k: round(v, 3) for k, v in per_file.most_common(8)}
    context.close()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "examples" / "demo.yaml"))
    parser.add_argument("--loads", type=int, default=3, help="new visitors after the first")
    parser.add_argument("--profile", action="store_true", help="also the browser's main-thread time per script")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            with server(ROOT, ["--spec", str(Path(args.spec).resolve())], ROOT / "test-artifacts" / "timeline.log") as (url, _):
                for k in range(args.loads + 1):
                    steps = timeline(browser, url, args.profile)
                    label = "first visitor" if k == 0 else f"new visitor {k}"
                    print(label + ": " + ", ".join(f"{name} {v:.2f} s" for name, v in steps.items()
                                                    if isinstance(v, float)))
                    if "main thread, s per script" in steps:
                        print("   main thread:", steps["main thread, s per script"])
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
