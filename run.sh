#!/usr/bin/env bash
# The main job: set up, build the offline demo zoo if missing, run MAP on it (cached), open the explorer.
#
#   ./run.sh                   the explorer on the demo at http://127.0.0.1:8501 (PORT=... to change)
#   ./run.sh --present         read-only stakeholder mode: explore, export coefficients and the report,
#                              share links; no paths, runs, measurements or checkpoint downloads
#   ./run.sh --spec S [--store DB] [--workspace DIR] [--trust-pickle]
#                              another experiment; specs typed in the app must lie under DIR (default:
#                              this directory); specs with trust_pickle only with --trust-pickle
#   ./run.sh --download-limit SIZE
#                              largest merged checkpoint offered as a download (default 2GiB); a larger
#                              one is written on the server under WORKSPACE/merged-checkpoints/
#
# Other arguments go to streamlit. The server listens on 127.0.0.1 only: to show it to others, put an
# authenticating reverse proxy in front of it (README, "Serving the app safely").
# The server starts warm (scripts/serve.py: the engine imported, the experiment opened and fitted before it
# listens), without a file watcher (.streamlit/config.toml). MERGE_EXPLORER_SKIP_SETUP=1 skips the setup and
# demo steps when both are known to be done (the page-load benchmark serves the app through this script).
set -euo pipefail
app=()
streamlit_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --present|--trust-pickle) app+=("$1"); shift ;;
    --download-limit)
      [ $# -ge 2 ] || { echo "run.sh: $1 needs a value" >&2; exit 2; }
      app+=("$1" "$2"); shift 2 ;;
    --download-limit=*) app+=("$1"); shift ;;
    --spec|--store|--workspace)
      [ $# -ge 2 ] || { echo "run.sh: $1 needs a value" >&2; exit 2; }
      app+=("$1" "$(realpath -m -- "$2")"); shift 2 ;;
    --spec=*|--store=*|--workspace=*) app+=("${1%%=*}" "$(realpath -m -- "${1#*=}")"); shift ;;
    *) streamlit_args+=("$1"); shift ;;
  esac
done
cd "$(dirname "$0")"
[ "${MERGE_EXPLORER_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
. .venv/bin/activate
case " ${app[*]-} ${MERGE_EXPLORER_SKIP_SETUP:-0}" in
  *" 1") ;;         # setup and demo known to be done
  *" --spec "*) ;;  # another experiment: the demo is not needed
  *) merge-explorer demo ;;
esac
exec python scripts/serve.py run app.py --browser.gatherUsageStats false --server.headless true --server.address 127.0.0.1 \
  --server.port "${PORT:-8501}" --client.toolbarMode viewer ${streamlit_args[@]+"${streamlit_args[@]}"} \
  -- ${app[@]+"${app[@]}"}
