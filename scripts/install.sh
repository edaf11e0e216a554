#!/usr/bin/env bash
# Set up .venv with kdtune and its test extras; as root on Debian also the system packages the
# tests use (Fashion-MNIST IDX files, Chromium for the MLflow UI test, PostgreSQL for the
# cluster test). Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision are pinned in pyproject.toml to builds that install from this machine's disk.
.venv/bin/python -m pip install -q -e ".[dev,server]"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  want=()
  [ -d /usr/share/datasets/fashion-mnist ] || want+=(dataset-fashion-mnist)
  command -v chromium >/dev/null || want+=(chromium)
  command -v chromedriver >/dev/null || want+=(chromium-driver)
  command -v pg_ctlcluster >/dev/null || want+=(postgresql)
  if [ ${#want[@]} -gt 0 ]; then
    echo "installing system packages: ${want[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${want[@]}" >/dev/null
  fi
fi
