"""One step of the GPU pack in a process of its own (run by pack.py): writes its result file as it
goes; any failure is recorded there as the step's result.

Usage: python bench/gpu/step.py STEP --preset gpu|dry --workdir DIR --data DIR
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path[1:1] = [str(Path(__file__).resolve().parents[1])]  # bench/: fedvision, fedreid, run

from common import PRESETS, STEPS, Preset, Recorder  # noqa: E402


def steps() -> dict[str, Callable[[Recorder, Preset, Path, Path], None]]:
    import steps_fed
    from steps_cuda import cuda_path

    return {
        "cuda-path": lambda rec, preset, workdir, _data: cuda_path(rec, preset, workdir),
        "fedvision": steps_fed.fedvision,
        "reid-data": steps_fed.reid_data,
        "fedreid": steps_fed.fedreid,
        "reid-simulation": steps_fed.reid_simulation,
        "noop-1gib": steps_fed.noop,
        "fedreid-cosine": steps_fed.fedreid_cosine,
        "fedreid-distill": steps_fed.fedreid_distill,
    }


def stop(signum: int, _frame: object) -> None:
    # Unwinds the step, so that its federation stops its processes on the way out.
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="data shared between steps")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, stop)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.data.mkdir(parents=True, exist_ok=True)
    rec = Recorder(args.workdir / "result.json")
    try:
        steps()[args.step](rec, PRESETS[args.preset], args.workdir, args.data)
    except Exception as e:  # noqa: BLE001 - a step's failure, whatever it is, is its recorded result
        traceback.print_exc()
        rec.finish("failed", f"{type(e).__name__}: {e}"[:500])
    return 0 if rec.status != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
