#!/usr/bin/env bash
# The GPU validation pack in one command: bash bench/gpu/run.sh OUT [--dry-run] [--steps a,b]
# Python: $PYTHON, else the project's .venv, else python3 (the device machine's, with CUDA
# PyTorch). Wheels carried in .whl/ (bench/gpu/wheels.sh) are installed first, offline.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py=$root/.venv/bin/python; else py=python3; fi
fi
site=
if compgen -G "$root/.whl/*.whl" >/dev/null; then
  site=${FEDSTREAM_PACK_SITE:-/tmp/fedstream-pack-site}
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$root"/.whl/*.whl
fi
src=$root/core/src:$root/tasks/src:$root/cli/src:$root/testing/src
src=$src:$root/services/scheduler/src:$root/services/aggregator/src:$root/services/client-agent/src
export PYTHONPATH=$src${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
exec "$py" "$root/bench/gpu/pack.py" "$@"
