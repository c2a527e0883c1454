"""What the chart renderer alone costs a page load: one scatter of 200 points drawn by Plotly or by Vega-Lite.

Two minimal Streamlit pages (a title, the scatter with click selection, one text block), served side by
side with run.sh's options and loaded alternately by new visitors in headless Chromium; a load ends when
a point is drawn and the text is on the page. This is why the app's front view is Vega-Lite
(explorer/front_vega.py): the page's own content is not the cost.

    python benchmarks/bench_chart_renderers.py [--loads 7]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_page_load import CHOSEN, CHROMIUM, CHROMIUM_FLAGS, PLOTLY_PLOTS, _median, server  # noqa: E402

HEAD = """import numpy as np
import streamlit as st
st.set_page_config(layout="wide")
st.markdown("## renderer test")
r = np.random.default_rng(0)
x, y = r.random(200), r.random(200)
"""
TAIL = 'st.container(key="chosen-coefficients").write("c = [0.1, 0.2]")\n'
APPS = {
    "plotly": (HEAD + "import plotly.graph_objects as go\n"
               "st.plotly_chart(go.Figure(go.Scatter(x=x, y=y, mode='markers')), on_select='rerun', "
               "selection_mode='points', key='f')\n" + TAIL, PLOTLY_PLOTS),
    "vega-lite": (HEAD + "rows = [{'x': float(a), 'y': float(b), 'i': i} for i, (a, b) in enumerate(zip(x, y))]\n"
                  "st.vega_lite_chart(spec={'data': {'values': rows}, 'mark': {'type': 'point', 'filled': True},\n"
                  "    'params': [{'name': 'pick', 'select': {'type': 'point', 'fields': ['i']}}],\n"
                  "    'encoding': {'x': {'field': 'x', 'type': 'quantitative'}, 'y': {'field': 'y', 'type': 'quantitative'}}},\n"
                  "    on_select='rerun', key='f')\n" + TAIL,
                  '[data-testid="stVegaLiteChart"] .mark-symbol.role-mark path'),
}


def load(browser, url: str, selector: str) -> float:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    start = time.perf_counter()
    page.goto(url, wait_until="commit")
    page.wait_for_selector(selector, timeout=60_000)
    page.wait_for_selector(CHOSEN, timeout=60_000)
    elapsed = time.perf_counter() - start
    context.close()
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=7, help="new visitors per renderer")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        roots = {}
        for name, (source, _) in APPS.items():
            roots[name] = Path(tmp) / name
            roots[name].mkdir()
            (roots[name] / "app.py").write_text(source)
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        log = ROOT / "test-artifacts"
        with server(roots["plotly"], [], log / "renderer-plotly.log", serve="streamlit") as (u1, _), \
                server(roots["vega-lite"], [], log / "renderer-vega.log", serve="streamlit") as (u2, _):
            times: dict[str, list[float]] = {name: [] for name in APPS}
            for _ in range(args.loads):  # alternately, so both see the same machine
                for name, url in (("plotly", u1), ("vega-lite", u2)):
                    times[name].append(load(browser, url, APPS[name][1]))
        browser.close()
    for name, values in times.items():
        print(f"{name:10s} median {_median(values):.2f} s  ({', '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
