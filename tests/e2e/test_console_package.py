"""The scheduler's wheel carries the web console: an install from it (as the container image
does) serves every file the console loads."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from fedstream_scheduler.console import assets

ROOT = Path(__file__).resolve().parents[2]


def test_the_scheduler_wheel_has_every_console_asset(tmp_path):
    source = tmp_path / "scheduler"  # a copy: building writes build/ and egg-info beside the sources
    shutil.copytree(ROOT / "services/scheduler", source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("fedstream_scheduler-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in assets():
        assert f"fedstream_scheduler/console/{name}" in names, f"the wheel lacks console/{name}"
