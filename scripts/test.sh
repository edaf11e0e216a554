#!/usr/bin/env bash
# The test command (README, .ci/run): install what the tests need, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export MLFLOW_DISABLE_TELEMETRY=true RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest -q "$@"
