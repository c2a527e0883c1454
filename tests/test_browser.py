"""The app in a real browser: `streamlit run app.py` on 127.0.0.1, driven by headless Chromium.

Uses Debian's chromium through Playwright (no browser download). Also runnable as a script to
take the documentation screenshots:

    python tests/test_browser.py --spec examples/demo.yaml --out docs/screenshots
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("MERGE_EXPLORER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"
VIEWPORT = {"width": 1280, "height": 800}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(spec: Path, log: Path, timeout: float = 120.0, app_args: tuple[str, ...] = ()):
    """`streamlit run app.py -- --spec SPEC [app_args]` on a free local port, started in the repository
    (so .streamlit/config.toml applies); stopped by its PID afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--", "--spec", str(spec), *app_args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=fh, stderr=subprocess.STDOUT, env=env,
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
            time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
            yield page
        finally:
            browser.close()


FRONT = '[data-testid="stVegaLiteChart"]'  # the front view (explorer/front_vega.py)
FRONT_POINTS = FRONT + " .mark-symbol.role-mark path"


def wait_for_plots(page, timeout_ms: int = 120_000) -> None:
    page.wait_for_selector(FRONT_POINTS, timeout=timeout_ms)
    page.wait_for_selector(".st-key-chosen-coefficients", timeout=timeout_ms)
    wait_idle(page, timeout_ms)


def wait_idle(page, timeout_ms: int = 60_000) -> None:
    """Until streamlit is not running the script (its status widget disappears)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


#: Labels of the front view whose boxes on screen overlap a marker (its own included) by more than a
#: pixel each way: what a reader sees as a label hiding a marker.
LABEL_OVERLAPS_JS = """() => {
  const plot = document.querySelector('[data-testid="stVegaLiteChart"]');
  const markers = [...plot.querySelectorAll('.mark-symbol.role-mark path')].map((p) => p.getBoundingClientRect());
  const labels = [...plot.querySelectorAll('.mark-text.role-mark text')].filter((x) => x.textContent)
    .map((x) => [x.textContent, x.getBoundingClientRect()]);
  const out = [];
  for (const [text, a] of labels) for (const b of markers) {
    const w = Math.min(a.right, b.right) - Math.max(a.left, b.left), h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
    if (w > 1 && h > 1) out.push(text);
  }
  return {labels: labels.length, markers: markers.length, overlaps: out};
}"""


def chosen_text(page) -> str:
    return page.locator(".st-key-chosen-coefficients").inner_text()


def move_slider(page, label: str, key: str = "End") -> None:
    thumb = page.locator(f'input[type="range"][aria-label="{label}"]').first
    thumb.focus()
    thumb.press(key)


@pytest.fixture(scope="module")
def toy_spec(tmp_path_factory) -> Path:
    from explorer.experiment.experiment import Experiment
    from tests.toy_zoo import build

    spec = build(tmp_path_factory.mktemp("toy-browser"))
    Experiment.from_file(spec).run(progress=False)
    return spec


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")
def test_slider_moves_chosen_point_in_browser(toy_spec):
    pytest.importorskip("playwright")
    ARTIFACTS.mkdir(exist_ok=True)
    with serve(toy_spec, ARTIFACTS / "streamlit-server.log") as url, browser_page() as page:
        page.goto(url, wait_until="domcontentloaded")
        wait_for_plots(page)
        assert page.locator(FRONT).count() == 1 and page.locator(".js-plotly-plot").count() == 0  # no Plotly bundle
        labels = page.evaluate(LABEL_OVERLAPS_JS)  # the front view at 1280x800: no label hides a marker
        assert labels["labels"] >= 5 and labels["overlaps"] == [], labels["overlaps"]
        before = chosen_text(page)
        assert re.match(r"c = \[[-0-9., ]+\]", before)
        move_slider(page, "Importance of high")
        page.wait_for_function(
            "(old) => { const e = document.querySelector('.st-key-chosen-coefficients'); return e && e.innerText !== old; }",
            arg=before, timeout=60_000)
        wait_idle(page)
        after = chosen_text(page)
        assert after != before
        assert "high%3A10" in page.url or "high:10" in page.url  # the choice is in the URL
        page.screenshot(path=str(ARTIFACTS / "browser-slider-moved.png"), full_page=False)
        # a click on a front point picks it: the tooltip's coefficients become the chosen ones
        points, shown = page.locator(FRONT_POINTS), None
        for k in range(0, points.count(), 7):
            points.nth(k).hover(force=True)
            tip = page.locator("#vg-tooltip-element")
            tip.wait_for(state="visible", timeout=10_000)
            text = tip.inner_text()
            if re.search(r"point\s+front\b", text):
                shown = re.findall(r"c\[\w+\] = (-?\d+\.\d+)", text)
                if shown != re.findall(r"-?\d+\.\d+", after):
                    break
        assert shown, "no front point found under the cursor"
        points.nth(k).click(force=True)
        page.wait_for_function(
            "(old) => { const e = document.querySelector('.st-key-chosen-coefficients'); return e && e.innerText !== old; }",
            arg=after, timeout=60_000)
        wait_idle(page)
        assert re.findall(r"-?\d+\.\d+", chosen_text(page)) == shown
        assert not page.locator('[data-testid="stException"]').count()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")
def test_present_mode_in_browser(toy_spec):
    """Read-only: no path input, run, verify, build or checkpoint download, no Deploy button; a
    slider still moves the choice, and coefficients.json downloads the chosen point."""
    pytest.importorskip("playwright")
    import json

    ARTIFACTS.mkdir(exist_ok=True)
    with serve(toy_spec, ARTIFACTS / "streamlit-present.log", app_args=("--present",)) as url, browser_page() as page:
        page.goto(url, wait_until="domcontentloaded")
        wait_for_plots(page)
        assert page.get_by_text("Present mode: read-only").count() >= 1
        assert page.locator('input[aria-label="Spec file (YAML)"]').count() == 0
        for label in ("Load spec", "Start evaluation", "Continue evaluation", "Evaluate the real merged model here",
                      "Build the demo now", "merged.safetensors"):
            assert page.get_by_role("button", name=label).count() == 0, label
        assert page.locator('[data-testid="stAppDeployButton"]').count() == 0
        assert page.get_by_role("button", name="coefficients.json").count() == 1
        before = chosen_text(page)
        move_slider(page, "Importance of high")
        page.wait_for_function(
            "(old) => { const e = document.querySelector('.st-key-chosen-coefficients'); return e && e.innerText !== old; }",
            arg=before, timeout=60_000)
        wait_idle(page)
        after = chosen_text(page)
        with page.expect_download(timeout=60_000) as info:
            page.get_by_role("button", name="coefficients.json").click()
        doc = json.loads(Path(info.value.path()).read_text())
        shown = re.findall(r"-?\d+\.\d+", after)
        assert [f"{doc['coefficients'][t]:.3f}" for t in ("low", "mid", "high")] == shown
        assert doc["preferences"]["weights"]["high"] == 10.0
        # the offline explorer: downloaded in present mode, it opens on the page's choice with no server
        with page.expect_download(timeout=60_000) as info:
            page.get_by_role("button", name="explorer.html").click()
        saved = ARTIFACTS / "present-explorer.html"
        info.value.save_as(saved)
        offline = page.context.browser.new_page()
        offline.goto(saved.as_uri())
        offline.wait_for_selector("#front .main-svg", timeout=60_000)
        assert re.findall(r"-?\d+\.\d+", offline.locator("#coefficients").inner_text()) == shown
        offline.close()
        page.screenshot(path=str(ARTIFACTS / "browser-present-mode.png"), full_page=False)
        assert not page.locator('[data-testid="stException"]').count()


# --- documentation screenshots ------------------------------------------------------------------
TABS = {"front": "Front", "all-tasks": "All tasks", "radar": "Radar", "landscape": "Landscape",
        "surrogate-quality": "Surrogate quality"}


def screenshots(spec: Path, out: Path, app_args: tuple[str, ...] = ()) -> list[Path]:
    """One 1280x800 screenshot per view of the app on `spec` (scripts/screenshots.py takes the whole set)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with serve(spec, ARTIFACTS / "streamlit-screenshots.log", app_args=app_args) as url, browser_page() as page:
        page.goto(url, wait_until="domcontentloaded")
        wait_for_plots(page)
        page.wait_for_timeout(1500)
        for name, tab in TABS.items():
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(1500)
            path = out / f"{name}.png"
            page.screenshot(path=str(path))
            paths.append(path)
    return paths


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="screenshots of the app's views (1280x800)")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = parser.parse_args()
    for p in screenshots(Path(args.spec).resolve(), Path(args.out)):
        print(p)
