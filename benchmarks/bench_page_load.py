"""Page load in a real browser: navigation to the first page showing its plots, on the demo.

Serves the app exactly as users get it: `./run.sh` (setup and demo steps skipped with
MERGE_EXPLORER_SKIP_SETUP=1, the server command unchanged: scripts/serve.py, .streamlit/config.toml)
on a free port, waits until it answers, then opens the page in headless Chromium (Playwright,
Debian's /usr/bin/chromium). One load = from `page.goto` to the moment a plot's data are drawn (a
point of the front view) and the chosen coefficients are on the page. Rows:
- cold: the first visitor after a server start, over `--cold-starts` starts (median <= 3 s);
- new visitors (a fresh browser context, nothing cached) and returning ones (the same context, a
  new tab: JavaScript from the cache) on the last server (median <= 3 s).
The slowest load is reported too: on a shared 2-core VM single loads swing with the neighbours'
load, so compare versions side by side in one run. Exit status 0 when both medians are under the target.

    python benchmarks/bench_page_load.py [--spec examples/demo.yaml] [--loads 5] [--cold-starts 5] [--present]
    python benchmarks/bench_page_load.py --serve streamlit --app-root /tmp/old-checkout   # an older app,
        served as its run.sh did (`streamlit run app.py` with run.sh's options, its own config.toml)
    python benchmarks/bench_page_load.py --app-root /tmp/prev --plotly-front   # a release whose run.sh skips
        setup (a `git worktree` with .venv linked in) and whose front view was a Plotly figure

Prints one line per load and writes benchmarks/results/page_load.json (--out to change).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("MERGE_EXPLORER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
TARGET_S = 3.0
#: a drawn point of the front view (Vega-Lite, explorer/front_vega.py), not just an empty chart frame
PLOTS = '[data-testid="stVegaLiteChart"] .mark-symbol.role-mark path'
PLOTLY_PLOTS = ".js-plotly-plot .scatterlayer .trace"  # the same for releases that drew the front with Plotly
CHOSEN = ".st-key-chosen-coefficients"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: run.sh's streamlit options (what `--serve streamlit` passes, as run.sh did before scripts/serve.py)
RUN_SH_OPTIONS = ["--browser.gatherUsageStats", "false", "--server.headless", "true", "--server.address", "127.0.0.1",
                  "--client.toolbarMode", "viewer"]


@contextlib.contextmanager
def server(app_root: Path, app_args: list[str], log: Path, timeout: float = 180.0, serve: str = "run.sh"):
    """The app served from `app_root` on a free loopback port, through its ./run.sh (`serve="run.sh"`)
    or its `streamlit run app.py` with run.sh's options; stopped by its process id afterwards. Yields
    (url, seconds from the start until the server answered)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(app_root), "PORT": str(port), "MERGE_EXPLORER_SKIP_SETUP": "1"}
    if serve == "run.sh":
        cmd = [str(app_root / "run.sh"), *app_args]
    else:
        cmd = [sys.executable, "-m", "streamlit", "run", "app.py", *RUN_SH_OPTIONS, "--server.port", str(port),
               "--", *app_args]
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=str(app_root), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start; log: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url, time.perf_counter() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def one_load(browser, url: str, timeout_ms: int, context=None, plots: str = PLOTS) -> float:
    """Seconds from navigation to plots and chosen point on screen, in a new tab (a new streamlit
    session) of `context`, or of a fresh context when None (a new visitor)."""
    own = context is None
    context = browser.new_context(viewport={"width": 1280, "height": 800}) if own else context
    page = context.new_page()
    try:
        start = time.perf_counter()
        page.goto(url, wait_until="commit")
        page.wait_for_selector(plots, timeout=timeout_ms)
        page.wait_for_selector(CHOSEN, timeout=timeout_ms)
        elapsed = time.perf_counter() - start
        if page.locator('[data-testid="stException"]').count():
            raise RuntimeError("the page shows an exception")
        return elapsed
    finally:
        page.close()
        if own:
            context.close()


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "examples" / "demo.yaml"))
    parser.add_argument("--store", help="store path (default: the spec's)")
    parser.add_argument("--app-root", default=str(ROOT), help="directory holding the app.py to serve")
    parser.add_argument("--serve", choices=["run.sh", "streamlit"], default="run.sh",
                        help="run.sh: through the app root's ./run.sh (default); streamlit: `streamlit run app.py` "
                             "with run.sh's options (an app version whose run.sh cannot skip its setup)")
    parser.add_argument("--cold-starts", type=int, default=5, help="server starts, each measured by its first visitor")
    parser.add_argument("--loads", type=int, default=5, help="warm loads per kind of visitor after the first")
    parser.add_argument("--present", action="store_true", help="serve in present mode (app flag --present)")
    parser.add_argument("--label", default="", help="a name for this run in the results")
    parser.add_argument("--plotly-front", action="store_true",
                        help="wait for a Plotly trace instead (an app release that drew the front with Plotly)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one load may take")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "page_load.json"))
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    app_args = ["--spec", str(Path(args.spec).resolve())] + (["--store", str(Path(args.store).resolve())] if args.store else [])
    app_args += ["--present"] if args.present else []
    root = Path(args.app_root).resolve()
    log = ROOT / "test-artifacts" / "bench-page-load.log"
    ms = int(args.timeout * 1000)
    plots = PLOTLY_PLOTS if args.plotly_front else PLOTS
    firsts, starts, warm, returning, loads = [], [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            for k in range(max(args.cold_starts, 1)):
                loads.append(round(os.getloadavg()[0], 2))
                with server(root, app_args, log, serve=args.serve) as (url, start_s):
                    starts.append(start_s)
                    firsts.append(one_load(browser, url, ms, plots=plots))
                    print(f"cold start {k + 1}: server answered after {start_s:.1f} s, first visitor {firsts[-1]:.2f} s "
                          f"(load average {loads[-1]})")
                    if k < args.cold_starts - 1:
                        continue
                    for n in range(args.loads):
                        warm.append(one_load(browser, url, ms, plots=plots))
                        print(f"warm load {n + 1}, new visitor: {warm[-1]:.2f} s")
                    visitor = browser.new_context(viewport={"width": 1280, "height": 800})
                    one_load(browser, url, ms, visitor, plots)  # fills this visitor's cache
                    for n in range(args.loads):
                        returning.append(one_load(browser, url, ms, visitor, plots))
                        print(f"warm load {n + 1}, returning visitor: {returning[-1]:.2f} s")
                    visitor.close()
        finally:
            browser.close()
    median, first = _median(warm), _median(firsts)
    record = {"label": args.label or f"{root.name} via {args.serve}", "app_root": str(root), "serve": args.serve,
              "spec": str(Path(args.spec).resolve()), "present": args.present,
              "first_loads_s": [round(w, 3) for w in firsts], "first_median_s": round(first, 3),
              "server_start_s": [round(w, 2) for w in starts],
              "warm_loads_s": [round(w, 3) for w in warm],
              "warm_median_s": round(median, 3), "warm_max_s": round(max(warm), 3) if warm else None,
              "returning_loads_s": [round(w, 3) for w in returning], "returning_median_s": round(_median(returning), 3),
              "target_s": TARGET_S, "under_target": bool(warm and median <= TARGET_S and first <= TARGET_S),
              "measured": time.strftime("%Y-%m-%d %H:%M"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_at_starts": loads,
                          "load_average": [round(x, 2) for x in os.getloadavg()]}}
    print(f"first visitor after a start: median {first:.2f} s over {len(firsts)} starts; new visitor median {median:.2f} s "
          f"(max {record['warm_max_s']} s); returning visitor median {record['returning_median_s']:.2f} s; target <= "
          f"{TARGET_S} s; load average {record['machine']['load_average']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text()).get("runs", []) if out.is_file() else []
    runs = [r for r in runs if r.get("label") != record["label"]] + [record]
    out.write_text(json.dumps({"target_s": TARGET_S, "runs": runs}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if record["under_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
