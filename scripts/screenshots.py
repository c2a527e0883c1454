"""Regenerate the screenshot set in docs/screenshots/ from the demo, at 1280×800 in Debian's chromium.

    python scripts/screenshots.py [--spec examples/demo.yaml] [--compare-store cache/compare8.sqlite]

- one screenshot per view of the app (front, all-tasks, radar, landscape, surrogate-quality), served
  in present mode on the demo;
- html-explorer.png: the offline explorer (`merge-explorer export SPEC --html`) opened from file://
  with the network blocked;
- methods-front.png: every merge method's front on the 8-task demo, when the store
  `merge-explorer compare` writes is there (scripts/screenshot_fronts.py).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_browser import browser_page, screenshots  # noqa: E402


def explorer_screenshot(spec: Path, out: Path, store: Path | None = None) -> Path:
    from explorer.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "explorer.html"
        argv = ["export", str(spec), "--html", str(html)] + (["--store", str(store)] if store else [])
        if main(argv) != 0:
            raise SystemExit(f"could not write the explorer for {spec}")
        with browser_page() as page:
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://") else r.abort())
            page.goto(html.as_uri())
            page.wait_for_selector("#front .scatterlayer .trace", timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(out))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "examples" / "demo.yaml"))
    ap.add_argument("--compare-spec", default=str(ROOT / "examples" / "demo8.yaml"))
    ap.add_argument("--compare-store", default=str(ROOT / "cache" / "compare8.sqlite"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = ap.parse_args()
    out = Path(args.out)
    spec = Path(args.spec).resolve()
    for path in screenshots(spec, out, app_args=("--present",)):
        print(f"wrote {path}")
    print(f"wrote {explorer_screenshot(spec, out / 'html-explorer.png')}")
    if Path(args.compare_store).is_file():
        from scripts import screenshot_fronts

        sys.argv = ["screenshot_fronts.py", "--spec", args.compare_spec, "--store", args.compare_store,
                    "--out", str(out / "methods-front.png")]
        screenshot_fronts.main()
    else:
        print(f"kept methods-front.png: no store at {args.compare_store} (merge-explorer compare writes it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
