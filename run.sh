#!/usr/bin/env bash
# The main job: set up, build the offline demo zoo if missing, run MAP on it (cached), open the explorer.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
. .venv/bin/activate
merge-explorer demo
exec streamlit run app.py --browser.gatherUsageStats false --server.headless true --server.address 127.0.0.1 --server.port "${PORT:-8501}" "$@"
