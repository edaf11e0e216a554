#!/usr/bin/env bash
# Install kdtune into .venv and run the main job: a quick sweep (KD, TPE + ASHA) on the
# embedded digits data. Run again, it continues (or just re-reports) the same sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
args=()
[ -d kdtune-results/quickstart ] && args+=(--resume)
exec .venv/bin/kdtune sweep run examples/quickstart.yaml "${args[@]}" "$@"
