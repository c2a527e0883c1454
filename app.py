"""merge-explorer: the interactive Pareto-front explorer (a thin streamlit view over `explorer/`).

    streamlit run app.py                          # the demo experiment (examples/demo.yaml)
    streamlit run app.py -- --spec my.yaml        # any spec; or set MERGE_EXPLORER_SPEC
    streamlit run app.py -- --present             # read-only stakeholder mode (./run.sh --present)

A spec is code (its evaluator is imported, `trust_pickle` unpickles): the app opens the spec it was
started with and, in normal mode, specs under the workspace (--workspace DIR, default the current
directory); `trust_pickle` specs only with --trust-pickle. Present mode types no paths, starts no
runs, measures nothing and builds no checkpoints: it shows what the store holds. A merged checkpoint
over the download limit (--download-limit SIZE or $MERGE_EXPLORER_DOWNLOAD_LIMIT, default 2 GiB) is
not offered as a download but written on the server under WORKSPACE/merged-checkpoints/.

All computation and every figure come from the engine (`explorer.app_state`, `explorer.figures`,
`explorer.report`); this file only lays out widgets, caches and calls.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from explorer import app_state as S
from explorer import figures as F
from explorer.errors import ExplorerError
from explorer.front_vega import coefficients_of, front_2d_spec
from explorer.experiment.store import CHECK_KINDS
from explorer.html_explorer import explorer_bytes
from explorer.vouch import decision_reason

LOG = logging.getLogger("merge-explorer.app")
PLOT_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


# --- caches ------------------------------------------------------------------------------------
def workspace() -> S.Workspace:
    """Per process: loaded experiments and the demo build job (warmed by scripts/serve.py before the first visitor)."""
    return S.process_workspace()


@st.cache_resource(show_spinner="Loading the experiment…")
def open_experiment(spec_signature: tuple, store: str | None, trust_pickle: bool,
                    read_only: bool = False) -> S.ExperimentHandle:
    """One handle (store connection, lazily built model and task vectors) per spec file version;
    `read_only` (present mode) opens the store read-only, so the page writes nothing to it."""
    return workspace().open(Path(spec_signature[0]), Path(store) if store else None, trust_pickle, read_only)


@st.cache_data(show_spinner="Fitting surrogates and computing the front…", max_entries=16)
def fit(fingerprint: str, _handle: S.ExperimentHandle):
    """Surrogates and front, cached by the content of the stored evaluations (the fingerprint)."""
    return _handle.fit()


@st.cache_resource(max_entries=16)
def quality_figure(fingerprint: str, verified_key: tuple, _result, _verified, _units):
    """The surrogate-quality view depends on the fit and the verified points only, not on the choice."""
    return F.surrogate_quality(_result, _verified, _units)


# --- sidebar: experiment ------------------------------------------------------------------------
def experiment_picker(args: S.AppArgs) -> Path:
    """The spec to show: the one the server was started with, another from the store, or a typed path.

    Present mode offers neither of the last two. Whatever is chosen is checked in `allowed_spec`.
    """
    ss = st.session_state
    ss.setdefault("spec_path", str(args.spec))
    st.sidebar.header("Experiment")
    if args.present:
        st.sidebar.caption(f"Showing `{Path(ss['spec_path']).name}` · present mode: read-only")
        return Path(ss["spec_path"])
    handle = ss.get("_handle_for_picker")
    if handle is not None:
        try:
            experiments = [e for e in handle.experiment.store.experiments() if e["meta"].get("spec_path")]
        except ExplorerError:
            experiments = []
        experiments = [e for e in experiments if Path(e["meta"]["spec_path"]) == args.spec
                       or Path(e["meta"]["spec_path"]).is_relative_to(args.workspace)]
        if len(experiments) > 1:
            labels = {e["meta"]["spec_path"]: f"{e['name']} ({e['n_points']} points)" for e in experiments}
            current = ss["spec_path"] if ss["spec_path"] in labels else None
            choice = st.sidebar.selectbox("In this store", list(labels), format_func=labels.get,
                                          index=list(labels).index(current) if current else None,
                                          placeholder="pick an experiment", key="picker_store")
            if choice and choice != ss["spec_path"]:
                ss["spec_path"] = choice
    with st.sidebar.form("load_spec", border=False):
        path = st.text_input("Spec file (YAML)", value=ss["spec_path"], key="spec_input",
                             help=f"A spec under {args.workspace}. Paths inside a spec are relative to it.")
        if st.form_submit_button("Load spec"):
            typed = Path(path).expanduser().resolve()
            refusal = S.spec_refusal(typed, args) if typed.is_file() else None
            if refusal:
                ss["_refusal"] = refusal  # shown once, in the main area; the current experiment stays
            else:
                ss["spec_path"] = str(typed)
    st.sidebar.caption(f"Showing `{Path(ss['spec_path']).name}`")
    return Path(ss["spec_path"])


def allowed_spec(spec: Path, args: S.AppArgs) -> Path | None:
    """`spec` if this server may open it; else a visible one-line refusal and the previous spec."""
    ss = st.session_state
    refusal = S.spec_refusal(spec, args)
    if refusal is None:
        ss["_last_allowed"] = str(spec)
        return spec
    st.error(refusal)
    fallback = Path(ss.get("_last_allowed") or args.spec)
    ss["spec_path"] = str(fallback)
    if fallback == spec or S.spec_refusal(fallback, args) is not None:
        return None
    return fallback


def demo_missing(message: str, present: bool) -> None:
    st.info(message)
    if present:
        st.caption("Present mode builds nothing: build the demo where the server runs, then reload this page.")
        return
    job = workspace().demo_job
    if job is not None and job.running:
        st.write(job.progress_text())
        st.progress(0.0, text="building… the page refreshes when the demo is ready")
        poll_demo()
        return
    if job is not None and job.error:
        st.error(f"Building the demo failed: {job.error} (log: {job.log_path})")
    st.code(S.DEMO_COMMAND, language="bash")
    if st.button("Build the demo now", type="primary"):
        workspace().start_demo_build()
        st.rerun()


@st.fragment(run_every=2.0)
def poll_demo() -> None:
    job = workspace().demo_job
    if job is None or not job.running:
        st.rerun()
    st.caption(job.progress_text())


# --- sidebar: evaluation runs -------------------------------------------------------------------
def run_panel(handle: S.ExperimentHandle, done: int, total: int, present: bool) -> None:
    st.sidebar.header("Evaluations")
    if present:
        st.sidebar.progress(min(done / max(total, 1), 1.0), text=f"{done} / {total} design and reference points in the store")
        return
    job = handle.job
    if job is not None and job.running:
        with st.sidebar:
            run_progress(handle)
        return
    demo = workspace().demo_job
    if demo is not None and demo.running:
        with st.sidebar:
            st.caption(demo.progress_text())
            poll_store(handle, done)
    if job is not None and job.error:
        st.sidebar.error(job.error)
    st.sidebar.progress(min(done / max(total, 1), 1.0), text=f"{done} / {total} design and reference points evaluated")
    if done < total:
        label = "Start evaluation" if done == 0 else "Continue evaluation"
        if st.sidebar.button(label, type="primary", help="Evaluates the design in the background; views fill in as results arrive."):
            handle.start_run()
            st.rerun()


@st.fragment(run_every=1.0)
def run_progress(handle: S.ExperimentHandle) -> None:
    """Polled while a run is active; a full rerun refreshes the views when new points arrived."""
    job = handle.job
    if job is None:
        return
    st.progress(min(job.done / max(job.total, 1), 1.0), text=job.progress_text())
    if st.button("Stop after the current point"):
        job.cancel.set()
    ss = st.session_state
    if not job.running or job.done - ss.get("_views_at", -1) >= max(1, job.total // 10):
        ss["_views_at"] = job.done
        st.rerun()


@st.fragment(run_every=3.0)
def poll_store(handle: S.ExperimentHandle, done_when_drawn: int) -> None:
    """Another process (the demo build, a terminal run) writes the store: refresh when points arrive."""
    done, total = handle.progress()
    st.progress(min(done / max(total, 1), 1.0), text=f"{done} / {total} points evaluated")
    if done != done_when_drawn or not workspace().demo_job.running:
        st.rerun()


# --- sidebar: preferences -----------------------------------------------------------------------
def preference_sliders(result, handle: S.ExperimentHandle, units: F.Units) -> tuple[dict, dict]:
    """One importance and one minimum slider per task; values seeded once from the URL."""
    ss, exp = st.session_state, handle.experiment
    ekey = exp.key[:12]
    if ss.get("_prefs_for") != ekey:
        ranges = {t: S.slider_range(result, i) for i, t in enumerate(result.tasks)}
        weights, minimums, picked, problems = S.decode_preferences(st.query_params.to_dict(), result.tasks,
                                                                   result.bounds, ranges)
        if st.query_params.get("exp") not in (None, ekey):
            weights, minimums, picked = {}, {}, None
        for t in result.tasks:
            ss[f"w:{ekey}:{t}"] = float(np.clip(round(weights.get(t, 1.0), 1), 0.0, 10.0))
            if t in minimums:
                ss[f"min:{ekey}:{t}"] = float(minimums[t]) * slider_scale(units, t)
        ss["_picked"], ss["_prefs_for"], ss["_link_problems"] = picked, ekey, problems
    for p in ss.get("_link_problems", []):
        st.sidebar.warning(p)

    def clear_pick():
        ss["_picked"] = None

    st.sidebar.header("Trade-off")
    st.sidebar.caption("Importance: how much each task counts. Minimum: the worst predicted value you accept "
                       "(a ceiling for metrics to minimise). Moving a slider re-reads the surrogates only.")
    weights, minimums = {}, {}
    for t in result.tasks:
        ss.setdefault(f"w:{ekey}:{t}", 1.0)  # widget state is dropped on runs that did not draw the slider
    for i, t in enumerate(result.tasks):
        scale = slider_scale(units, t)  # accuracies are shown in percent
        lo, hi = (round(scale * v, 8) for v in S.slider_range(result, i))
        step = S.slider_step(lo, hi)
        maximise = result.senses[i] > 0
        off = lo if maximise else hi
        mkey = f"min:{ekey}:{t}"
        if mkey not in ss or ss.get(f"_off:{mkey}") == ss[mkey]:
            ss[mkey] = off  # no bound (also when the range moved under an unset slider)
        ss[mkey] = float(np.clip(ss[mkey], lo, hi))
        ss[f"_off:{mkey}"] = off
        with st.sidebar.container(border=True):
            weights[t] = st.slider(f"Importance of {t}", 0.0, 10.0, step=0.1, key=f"w:{ekey}:{t}", on_change=clear_pick)
            unit = " (%)" if units.is_fraction(t) else ""
            fmt = f"%.{max(0, int(-np.floor(np.log10(step))))}f"
            value = st.slider(f"{'Minimum' if maximise else 'Maximum'} {t} {units.metrics.get(t, '')}{unit}".strip(),
                              lo, hi, step=step, key=mkey, format=fmt, on_change=clear_pick,
                              help="at the left end (right end for metrics to minimise) there is no bound")
            if abs(value - off) > step / 2:
                minimums[t] = float(value) / scale
    if sum(weights.values()) <= 0:
        st.sidebar.warning("All importances are zero; using equal importance.")
        weights = {t: 1.0 for t in result.tasks}
    return weights, minimums


def slider_scale(units: F.Units, task: str) -> float:
    return 100.0 if units.is_fraction(task) else 1.0


# --- main area ----------------------------------------------------------------------------------
def chosen_panel(handle, result, decision, measured, minimums, units, weights, figs, ekey, refs,
                 args: S.AppArgs) -> None:
    present = args.present
    metrics = units.metrics
    st.subheader("Chosen merge")
    st.caption(f"Merge method: {handle.method_title} (`merge.method` in the spec; exported with its parameters).")
    polished = polished_shown(ekey)
    if ss_picked() is not None:
        st.caption("The polished merge: the best point the polish measured." if polished else
                   "Selected by clicking a point in a view.")
        if st.button("Back to the choice from the sliders"):
            st.session_state["_picked"] = None
            st.rerun()
    if not decision.feasible:
        short = ", ".join(f"{t} by {s:.4f}" for t, s in zip(result.tasks, decision.shortfall) if s > 0)
        st.warning(f"No front point meets every minimum; showing the closest one (short: {short}).")
    reason = decision_reason(result, decision)
    if reason and measured is None:
        st.warning(f"The surrogates do not vouch for this point ({reason}): its prediction may be off; "
                   "a measurement settles it.")
    lines = glance(result, decision, measured, units, refs)
    st.markdown("\n".join(f"- {line}" for line in lines))
    rows = S.choice_rows(result.tasks, metrics, decision, measured, minimums,
                         [units.is_fraction(t) for t in result.tasks])
    # a markdown table and no HTML: the first page loads no data-grid, Arrow or raw-HTML scripts
    # (together ~0.3 s of a 3 s page load on a 2-core machine, benchmarks/bench_page_load.py)
    st.markdown(S.markdown_table(rows, S.CHOICE_HEADERS))
    with st.container(key="chosen-coefficients"):  # the page's element class .st-key-chosen-coefficients
        st.markdown("c = [" + ", ".join(f"{c:.3f}" for c in decision.coefficients) + "]")

    st.subheader("Verify")
    if measured is not None:
        st.success("Verified: the real merged model at these coefficients is measured and stored.")
    if present:
        if measured is None:
            st.caption("Not measured yet. Present mode shows stored measurements only; the merges verified "
                       "so far are the orange stars in the views.")
    else:
        verify_button(handle, decision)
        polish_panel(handle, result, weights, minimums, ekey, polished)
    export_buttons(handle, result, decision, weights, minimums, figs, rows, lines, args)


def glance(result, decision, measured, units, refs) -> list[str]:
    values = measured if measured is not None else decision.predicted
    fractions = [units.is_fraction(t) for t in result.tasks]
    return S.glance_lines(result.tasks, result.senses, fractions, values,
                          S.References.from_markers(refs, len(result.tasks)), measured is not None)


def verify_button(handle, decision) -> None:
    disabled = handle.busy
    if st.button("Evaluate the real merged model here", disabled=disabled, key="verify",
                 help="Merges the checkpoints at the chosen coefficients, runs every task's evaluator and stores the result."):
        with st.spinner("Merging and evaluating…"):
            handle.verify(decision.coefficients)
        st.rerun()
    if disabled:
        st.caption("Verification waits until the running evaluation has finished.")


def polished_shown(ekey: str) -> dict | None:
    """The last polish of this experiment, while the chosen merge is its result."""
    shown, picked = st.session_state.get("_polished"), ss_picked()
    if shown and shown["for"] == ekey and picked is not None and np.allclose(picked, shown["coefficients"]):
        return shown
    return None


def polish_panel(handle, result, weights, minimums, ekey, shown) -> None:
    """Polish: a few real evaluations around the pick; the best measured point becomes the chosen merge."""
    budget = int(st.number_input("Polish budget (real evaluations)", min_value=1, max_value=50, value=12, step=1,
                                 key="polish_budget", disabled=handle.busy))
    if st.button(f"Polish ({budget} evaluations)", key="polish", disabled=handle.busy,
                 help="Starts from the choice of the sliders: measures it, then merges near it where the surrogates "
                      "(corrected by what was measured) expect better, and keeps the best measured one. "
                      "Every result is stored; a repeated polish reuses them."):
        bar = st.progress(0.0, text=f"polishing: 0 / {budget} evaluations")
        started = time.time()
        polished = handle.polish(result, {t: float(w) for t, w in weights.items()}, minimums, budget,
                                 lambda done, total: bar.progress(done / total, text=S.polish_progress_text(done, total, started)))
        c = polished.best[0]
        st.session_state["_polished"] = {"for": ekey, "coefficients": c, "summary": S.polish_summary(polished),
                                         "rows": S.polish_rows(result.tasks, result, polished)}
        st.session_state["_picked"] = c
        st.rerun()
    if shown:
        st.caption(shown["summary"])
        st.dataframe(pd.DataFrame(shown["rows"]), hide_index=True, width="stretch", key="polish_table")


def export_buttons(handle, result, decision, weights, minimums, figs, rows, summary, args: S.AppArgs) -> None:
    exp = handle.experiment
    st.subheader("Export")
    w = {t: float(weights[t]) for t in result.tasks}
    m = {t: float(v) for t, v in minimums.items()} or None
    files = handle.export_text_files(result, decision, w, m)
    cols = st.columns(2)
    cols[0].download_button("coefficients.json", files["coefficients.json"], "coefficients.json", "application/json",
                            key="dl_json", on_click="ignore")
    cols[1].download_button("mergekit.yaml", files["mergekit.yaml"], "mergekit.yaml", "application/x-yaml",
                            key="dl_yaml", on_click="ignore")
    title = f"merge-explorer report: {exp.spec.name}"
    notes = report_notes(result, decision)
    cols[1].download_button("report.html", lambda: S.report_bytes(title, figs(), rows, notes, summary=summary),
                            "report.html", "text/html", key="dl_report", on_click="ignore",
                            help="The plots and the chosen point in one file that opens in any browser.")
    cols[0].download_button("explorer.html", lambda: explorer_bytes(exp, result, w, m), "explorer.html", "text/html",
                            key="dl_explorer", on_click="ignore",
                            help="The explorer in one file for people without this server: sliders, front and chosen "
                                 "merge, opened offline in any browser; it starts from the current choice.")
    if args.present:
        st.caption("The merged checkpoint is built where the server runs: "
                   "`merge-explorer export SPEC --weights ... --out DIR` with these preferences.")
        return
    c = decision.coefficients.copy()
    size = handle.merged_checkpoint_size()
    if size <= args.download_limit and handle.checkpoint_is_one_file:
        cols[0].download_button("merged.safetensors", lambda: handle.merged_checkpoint(c), "merged.safetensors",
                                "application/octet-stream", key="dl_ckpt", on_click="ignore", disabled=handle.busy,
                                help="Built on click (loads the checkpoints once per server).")
        return
    server_checkpoint(handle, c, size, args, files)


def server_checkpoint(handle, c, size: int, args: S.AppArgs, files: dict) -> None:
    """Over the download limit, or a model folder: write the merged checkpoint on the server and show where."""
    why = (f"is over this server's download limit ({S.format_bytes(args.download_limit)}, `--download-limit`)"
           if size > args.download_limit else "is a model folder, not one file")
    st.caption(f"The merged checkpoint ({S.format_bytes(size)}) {why}: it is written on the server, "
               f"under `{args.workspace / S.SERVER_EXPORTS_DIR}`.")
    folder = handle.server_export_dir(c, args.workspace)
    written = handle.server_checkpoint(folder) if folder.is_dir() else None
    if written is None and st.button("Write the merged checkpoint on the server", key="write_ckpt",
                                     disabled=handle.busy, help="Writes the merge to disk on the server; the path appears here."):
        with st.spinner("Writing the merged checkpoint…"):
            written = handle.write_merged_on_server(c, args.workspace, files)
    if written is not None:
        st.success(f"Merged checkpoint written on the server: `{written}` (with coefficients.json and mergekit.yaml "
                   f"beside it).")


def report_notes(result, decision) -> list[str]:
    notes = []
    poor = S.poor_fits(result)
    if poor:
        notes.append("Surrogate fit is poor (R² < 0.8) for " + ", ".join(f"{t} (R² = {r:.2f})" for t, r in poor.items())
                     + ": predictions for these tasks are unreliable.")
    if not decision.feasible:
        notes.append("No front point meets every minimum; the closest one is shown.")
    return notes


def ss_picked():
    return st.session_state.get("_picked")


def handle_selection(event, key: str) -> None:
    """A click on a Plotly view picks the clicked point's coefficients (carried in customdata)."""
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    picked = [np.asarray(p["customdata"], dtype=float) for p in points
              if p.get("customdata") is not None and len(np.atleast_1d(p["customdata"])) > 1]
    select_point(picked[0] if picked else None, key)


def select_point(coefficients, key: str) -> None:
    """Make a clicked point the choice, once per click (a rerun repeats the last selection event)."""
    sig = None if coefficients is None else str(np.round(coefficients, 12).tolist())
    ss = st.session_state
    if ss.get(f"_sel:{key}") == sig:
        return
    ss[f"_sel:{key}"] = sig
    if coefficients is not None:
        ss["_picked"] = np.asarray(coefficients, dtype=float)
        st.rerun()


@dataclass
class ViewState:
    """Everything the views draw for one state of the page."""

    result: object
    chosen: F.Chosen
    minimums: dict
    refs: list
    verified: list
    units: F.Units
    evaluated: tuple
    ekey: str
    fingerprint: str
    method: str = ""           # this front's merge method, as a stakeholder reads it
    others: tuple = ()         # (title, result) of other merge methods' runs on the same checkpoints

    @property
    def floors(self) -> list[float]:
        return [self.minimums.get(t, np.nan) for t in self.result.tasks]


TABS = ["Front", "All tasks", "Radar", "Landscape", "Surrogate quality"]


def views(v: ViewState) -> None:
    """The tabs; only the open one is built and drawn (on_change="rerun"), so a page opens with one plot."""
    tabs = st.tabs(TABS, key=f"views:{v.ekey}", on_change="rerun")
    for tab, draw in zip(tabs, (front_view, parallel_view, radar_view, landscape_view, quality_view)):
        if tab.open is not False:  # None: tabs without state tracking draw everything
            with tab:
                draw(v)


def remembered(key: str, default):
    """A widget key whose value survives runs that do not draw the widget (a closed tab)."""
    ss = st.session_state
    if key not in ss:
        ss[key] = ss.get("_keep:" + key, default)
    ss["_keep:" + key] = ss[key]
    return key


def front_tasks(v: ViewState) -> list[int]:
    tasks = v.result.tasks
    chosen = st.session_state.get("_keep:" + f"front_tasks:{v.ekey}", tasks[:2])
    return [tasks.index(t) for t in chosen if t in tasks]


def front_view(v: ViewState) -> None:
    tasks = v.result.tasks
    # pills, not a multiselect: one click per task, and no combobox scripts on the first page (-0.13 s load)
    st.pills("Tasks to plot (two for 2-D, three for 3-D)", tasks, selection_mode="multi",
             key=remembered(f"front_tasks:{v.ekey}", tasks[:2]))
    idx = front_tasks(v)
    if not 2 <= len(idx) <= 3:
        st.info("Choose two or three tasks.")
        return
    if len(idx) == 3:
        fig = F.front_3d(v.result, tuple(idx), v.chosen, v.refs, v.verified, v.units, v.evaluated)
        st.plotly_chart(fig, key=f"front3d:{v.ekey}", config=PLOT_CONFIG)
        st.caption("Click a point in the 2-D view below to select it.")
    # Vega-Lite, not Plotly: the first page then needs no Plotly bundle (explorer/front_vega.py says why)
    spec = front_2d_spec(v.result, (idx[0], idx[1]), v.chosen, v.refs, v.verified, v.units, v.evaluated,
                         others=v.others, method=v.method)
    event = st.vega_lite_chart(spec=spec, key=f"front2d:{v.ekey}", on_select="rerun", width="stretch")
    select_point(coefficients_of(spec, (event or {}).get("selection")), "front2d")
    if v.others:
        st.caption(f"The points and the chosen merge are {v.method}'s. Dashed lines: the fronts of "
                   + ", ".join(title for title, _ in v.others) + " on the same models (predicted; "
                   "`merge-explorer compare` measures them); the higher and further right, the better.")


def parallel_view(v: ViewState) -> None:
    fig = F.parallel(v.result, v.floors, v.chosen, v.verified, v.units)
    st.plotly_chart(fig, key=f"parallel:{v.ekey}", config=PLOT_CONFIG)
    st.caption("The thick vermillion line is the chosen merge. Greyed lines miss a minimum (the bars on the "
               "axes show the ranges the sliders allow).")


def radar_view(v: ViewState) -> None:
    experts = F.expert_diagonal(v.refs, len(v.result.tasks))
    if experts is None:
        st.info("The radar needs every expert's own metric (the reference points of the run).")
        return
    fig = F.radar(v.result.tasks, experts, v.result.senses, v.chosen, v.refs)
    st.plotly_chart(fig, key=f"radar:{v.ekey}", config=PLOT_CONFIG)


def landscape_axes(v: ViewState) -> tuple[int, int, int]:
    """(task, x, y) indices of the landscape view's current choice."""
    tasks, ss = v.result.tasks, st.session_state
    names = [ss.get(f"_keep:ls_{k}:{v.ekey}", d) for k, d in (("task", tasks[0]), ("x", tasks[0]), ("y", tasks[1]))]
    return tuple(tasks.index(n) if n in tasks else 0 for n in names)


def landscape_view(v: ViewState) -> None:
    tasks = v.result.tasks
    c1, c2, c3 = st.columns(3)
    c1.selectbox("Surrogate of task", tasks, key=remembered(f"ls_task:{v.ekey}", tasks[0]))
    c2.selectbox("x: coefficient of", tasks, key=remembered(f"ls_x:{v.ekey}", tasks[0]))
    c3.selectbox("y: coefficient of", tasks, key=remembered(f"ls_y:{v.ekey}", tasks[1]))
    task, ax, ay = landscape_axes(v)
    if ax == ay:
        st.info("Choose two different coefficients.")
        return
    fig = F.landscape(v.result, task, (ax, ay), v.chosen.coefficients, v.chosen, v.refs, v.verified, v.units)
    event = st.plotly_chart(fig, key=f"landscape:{v.ekey}", on_select="rerun", selection_mode="points",
                            config=PLOT_CONFIG)
    handle_selection(event, "landscape")


def quality_view(v: ViewState) -> None:
    fig = quality_figure(v.fingerprint, tuple(tuple(m.coefficients) for m in v.verified), v.result, v.verified,
                         v.units)
    st.plotly_chart(fig, key=f"quality:{v.ekey}", config=PLOT_CONFIG)
    st.caption("Each evaluated point is drawn at the prediction of the fit made without it (bars: ±2 std), "
               "the same left-out predictions R² is computed from. Verified merges (stars) were measured "
               "after the fit: the honest check of the predictions.")


def report_figures(v: ViewState):
    """A function building every view for the report with the page's current choices (run on click)."""
    idx, (task, ax, ay) = front_tasks(v), landscape_axes(v)
    pair = (idx[0], idx[1]) if len(idx) >= 2 else (0, 1)
    triple = tuple(idx) if len(idx) == 3 else None
    axes = (ax, ay) if ax != ay else (0, 1)
    return lambda: F.all_views(v.result, v.chosen, v.floors, v.refs, v.verified, v.units, pair, triple, task, axes,
                               v.evaluated)


def sync_url(result, weights, minimums, ekey) -> None:
    wanted = S.encode_preferences(result.tasks, weights, minimums, ekey, ss_picked())
    current = st.query_params.to_dict()
    if current != wanted:
        st.query_params.from_dict(wanted)


def follow_link(handle: S.ExperimentHandle, args: S.AppArgs) -> None:
    """A shared link names its experiment (exp=key prefix): open that one if this store knows it and
    this server may open its spec."""
    ss = st.session_state
    if ss.get("_link_followed"):
        return
    ss["_link_followed"] = True
    want = st.query_params.get("exp")
    if not want or handle.experiment.key.startswith(want):
        return
    for e in handle.experiment.store.experiments():
        path = e["meta"].get("spec_path")
        if e["key"].startswith(want) and path and Path(path).is_file():
            refusal = S.spec_refusal(Path(path), args)
            if refusal is None:
                ss["spec_path"] = path
                st.rerun()
            st.warning(f"The link names experiment {e['name']!r}, which this server does not open "
                       f"({refusal}); showing {handle.experiment.spec.name!r}.")
            return
    st.warning(f"The link names experiment {want!r}, which this store does not have; showing {handle.experiment.spec.name!r}.")


def main() -> None:
    st.set_page_config(page_title="merge-explorer", page_icon="🔀", layout="wide")
    st.markdown("## merge-explorer")
    st.caption("Amortized Pareto fronts for model merging (MAP): pick the trade-off, see it at once, verify it, export it.")
    args = S.app_args()
    if args.present:
        st.caption("Present mode: read-only. Explore, export the coefficients and the report, share the link.")
    picked = experiment_picker(args)
    if st.session_state.get("_refusal"):
        st.error(st.session_state.pop("_refusal"))
    spec = allowed_spec(picked, args)
    if spec is None:
        return
    if Path(spec) == S.DEFAULT_SPEC:
        ready, message = S.demo_ready(spec)
        if not ready:
            demo_missing(message, args.present)
            return
    handle = open_experiment(S.file_signature(spec), str(args.store) if args.store else None, args.trust_pickle,
                             read_only=args.present)
    st.session_state["_handle_for_picker"] = handle
    exp = handle.experiment
    ekey = exp.key[:12]
    C, M, kinds, fingerprint = handle.snapshot()
    done, total = handle.progress()
    follow_link(handle, args)
    run_panel(handle, done, total, args.present)
    units = F.units_for(exp.tasks, {t: exp.spec.tasks[t].metric for t in exp.tasks}, exp.senses)
    try:
        result = fit(fingerprint, handle)
    except ExplorerError as exc:
        if args.present:
            st.info(f"No front yet: {exc}.")
        else:
            st.info(f"No front yet: {exc}. Press **Start evaluation** in the sidebar "
                    f"(or run `merge-explorer run {spec}` in a terminal); the views appear as results arrive.")
        return
    poor = S.poor_fits(result)
    if poor:
        st.warning("Surrogate fit is poor (cross-validated R² < 0.8) for "
                   + ", ".join(f"**{t}** (R² = {r:.2f})" for t, r in poor.items())
                   + ": predictions for these tasks are unreliable. Verify the chosen merge, or evaluate more points.")
    examples_note = handle.examples_note()
    if examples_note:
        st.caption(examples_note)
    weights, minimums = preference_sliders(result, handle, units)
    try:
        decision = S.choose(result, weights, minimums, ss_picked())
    except ValueError as exc:
        st.error(str(exc))
        return
    measured = handle.stored(decision.coefficients)
    chosen = S.chosen_view(decision, measured)
    refs, verified = handle.markers(C, M, kinds)
    keep = [k not in CHECK_KINDS for k in kinds]
    evaluated = (C[keep], M[keep])
    sync_url(result, weights, minimums, ekey)
    v = ViewState(result, chosen, minimums, refs, verified, units, evaluated, ekey, fingerprint,
                  handle.method_title, tuple(handle.sibling_fronts()))
    left, right = st.columns([3, 2], gap="medium")
    with left:
        views(v)
    with right:
        chosen_panel(handle, result, decision, measured, minimums, units, weights, report_figures(v), ekey, refs,
                     args)


try:
    main()
except ExplorerError as exc:
    st.error(str(exc))
except Exception as exc:  # noqa: BLE001 - the page shows a message, the log keeps the traceback
    LOG.exception("merge-explorer app error")
    st.error(f"Unexpected error ({type(exc).__name__}): {exc}. The server log has the details.")
