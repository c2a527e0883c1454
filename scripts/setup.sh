#!/usr/bin/env bash
# Idempotent setup for a fresh machine: Debian packages (when root), .venv/, torch, the package.
# A second run reuses everything that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(dataset-fashion-mnist chromium fonts-dejavu-core fonts-liberation)
missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: please install these Debian packages: ${missing[*]}" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! python -c "import torch, torchvision, sys; sys.exit(0 if (torch.__version__.startswith('2.14.1') and torchvision.__version__.startswith('0.29.1')) else 1)" 2>/dev/null; then
  echo "setup: installing torch 2.14.1 + torchvision 0.29.1"
  pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi

stamp=.venv/.merge-explorer-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! python -c "import explorer" 2>/dev/null; then
  echo "setup: installing merge-explorer and its dependencies into .venv/"
  pip install -q -e ".[test,ray]"
  echo "$want" > "$stamp"
fi
