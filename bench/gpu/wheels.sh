#!/usr/bin/env bash
# Downloads, here, the wheels the GPU machine lacks (bench/gpu/requirements.txt) into .whl/ at
# the repository's root, for its CPython 3.12 on x86-64; bench/gpu/run.sh installs them there
# offline. .whl/ is ignored by git: carry it to the device machine (docs/gpu.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
grep -qx '/.whl/' "$(git -C "$root" rev-parse --git-common-dir)/info/exclude" 2>/dev/null ||
  echo '/.whl/' >> "$(git -C "$root" rev-parse --git-common-dir)/info/exclude"
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  -d "$root/.whl" -r "$root/bench/gpu/requirements.txt"
du -sh "$root/.whl"
