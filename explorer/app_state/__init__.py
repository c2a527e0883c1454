"""Engine-side helpers for the app: arguments, share links, background runs, the chosen point.

Nothing here imports streamlit, so every piece is testable on its own and the app stays a thin
view (widgets, layout, calls). One module per idea:

- `arguments`: what the server was started with and what it allows (AppArgs, app_args, spec_refusal)
- `share_links`: the preferences as URL query parameters (encode_preferences, decode_preferences)
- `jobs`: background jobs the page polls (Job, format_seconds)
- `handle`: the loaded experiment shared by all sessions (ExperimentHandle, Workspace, demo_ready)
- `choice`: the chosen point (choose, chosen_view)
- `tables`: text and tables for the page (choice_rows, markdown_table, glance_lines, report_bytes, ...)

Every public name is re-exported here (`from explorer import app_state as S; S.Workspace`). A test
that patches a name patches it in the module that looks it up (e.g. `app_state.arguments.DEFAULT_SPEC`).
"""
from explorer.app_state.arguments import (
    DEFAULT_SPEC,
    DOWNLOAD_LIMIT_BYTES,
    DOWNLOAD_LIMIT_ENV,
    PRESENT_ENV,
    REPO_ROOT,
    SPEC_ENV,
    STORE_ENV,
    TRUST_PICKLE_ENV,
    WORKSPACE_ENV,
    AppArgs,
    app_args,
    file_signature,
    format_bytes,
    parse_size,
    spec_refusal,
)
from explorer.app_state.choice import choose, chosen_view
from explorer.app_state.handle import (
    DEMO_COMMAND,
    SERVER_EXPORTS_DIR,
    ExperimentHandle,
    Workspace,
    demo_ready,
    process_workspace,
)
from explorer.app_state.jobs import Job, format_seconds
from explorer.app_state.share_links import WEIGHT_RANGE, decode_preferences, encode_preferences
from explorer.app_state.tables import (
    CHOICE_HEADERS,
    References,
    choice_rows,
    glance_lines,
    markdown_table,
    polish_progress_text,
    polish_rows,
    polish_summary,
    poor_fits,
    report_bytes,
    slider_range,
    slider_step,
    to_buffer,
)

__all__ = [
    "AppArgs", "CHOICE_HEADERS", "DEFAULT_SPEC", "DEMO_COMMAND", "DOWNLOAD_LIMIT_BYTES", "DOWNLOAD_LIMIT_ENV",
    "ExperimentHandle", "Job", "PRESENT_ENV", "REPO_ROOT", "References", "SERVER_EXPORTS_DIR", "SPEC_ENV",
    "STORE_ENV", "TRUST_PICKLE_ENV", "WEIGHT_RANGE", "WORKSPACE_ENV", "Workspace", "app_args", "choice_rows",
    "choose", "chosen_view", "decode_preferences", "demo_ready", "encode_preferences", "file_signature",
    "format_bytes", "format_seconds", "glance_lines", "markdown_table", "parse_size", "polish_progress_text",
    "polish_rows", "polish_summary", "poor_fits", "process_workspace", "report_bytes", "slider_range", "slider_step", "spec_refusal",
    "to_buffer",
]
