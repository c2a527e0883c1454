"""Screenshot of the front view with every merge method's front overlaid (docs/screenshots/methods-front.png).

    python scripts/screenshot_fronts.py [--spec examples/demo8.yaml] [--store cache/compare8.sqlite]

Needs the store `merge-explorer compare` wrote; serves the app in present mode (read-only) with
Debian's chromium through Playwright, at 1280×800.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_browser import FRONT, browser_page, serve, wait_for_plots  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "examples" / "demo8.yaml"))
    ap.add_argument("--store", default=str(ROOT / "cache" / "compare8.sqlite"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots" / "methods-front.png"))
    args = ap.parse_args()
    with serve(Path(args.spec), ROOT / "test-artifacts" / "screenshot.log", timeout=300,
               app_args=("--store", args.store, "--present")) as url, browser_page() as page:
        page.goto(url, timeout=300_000)
        wait_for_plots(page, 300_000)
        page.locator(FRONT).first.screenshot(path=args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
