#!/usr/bin/env bash
# Install kdtune into .venv and run the main job: a quick sweep on the embedded digits data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/kdtune train examples/quickstart.yaml "$@"
