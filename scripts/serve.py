"""Serve the app warm: load what every visit needs, then hand over to `streamlit run` in this process.

    python scripts/serve.py run app.py [streamlit options] -- [app options]      (./run.sh does this)

Without it the first visitor after a start waits for the engine's imports (torch among them), the
experiment's opening and the first fit, several seconds on a 2-core machine
(benchmarks/bench_page_load.py). Here they happen before the server listens: the modules land in
`sys.modules` and the experiment in the process's workspace (`app_state.process_workspace`), which
the app's sessions share. A failure here is only logged: the page shows it to the visitor as usual.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def warm(app_argv: list[str]) -> str:
    """Import what the page imports, open the experiment it shows and fit it; returns one line."""
    start = time.perf_counter()
    import pandas  # noqa: F401  - the app's imports, in the order app.py makes them
    import plotly.io  # noqa: F401

    from explorer import app_state as S
    from explorer import figures as F
    from explorer.front_vega import front_2d_spec

    args = S.app_args(app_argv)
    if args.spec == S.DEFAULT_SPEC and not S.demo_ready(args.spec)[0]:
        return f"serve: modules loaded in {time.perf_counter() - start:.1f} s (no demo yet: nothing to open)"
    handle = S.process_workspace().open(args.spec, args.store, args.trust_pickle, read_only=args.present)
    result = handle.fit()
    C, M, kinds, _ = handle.snapshot()
    refs, verified = handle.markers(C, M, kinds)
    exp = handle.experiment
    units = F.units_for(exp.tasks, {t: exp.spec.tasks[t].metric for t in exp.tasks}, exp.senses)
    chosen = S.chosen_view(result.decide(), handle.stored(result.decide().coefficients))
    front_2d_spec(result, (0, 1), chosen, refs, verified, units, (C, M), others=tuple(handle.sibling_fronts()))
    return (f"serve: {exp.spec.name!r} opened and fitted in {time.perf_counter() - start:.1f} s, "
            "before the first visitor")


def main() -> int:
    argv = sys.argv[1:]
    app_argv = argv[argv.index("--") + 1:] if "--" in argv else []
    try:
        print(warm(app_argv), flush=True)
    except Exception as exc:  # noqa: BLE001 - the page reports problems to its visitors; never block the start
        print(f"serve: warm-up skipped ({type(exc).__name__}: {exc})", flush=True)
    from streamlit.web import cli

    sys.argv = ["streamlit", *argv]
    return cli.main(prog_name="streamlit")


if __name__ == "__main__":
    sys.exit(main())
