"""Human output on stderr and in tables: a progress bar, byte sizes, local times."""

from __future__ import annotations

import sys
import time


def human_bytes(n: float) -> str:
    """``n`` bytes as B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def local_time(unix: float, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A Unix time in the local time zone."""
    return time.strftime(fmt, time.localtime(unix))


class Bar:
    """A progress bar on stderr: redrawn in place on a terminal, a line per change otherwise."""

    def __init__(self, total: float, label: str, unit: str = "") -> None:
        self.total, self.label, self.unit = max(total, 1), label, unit
        self.tty = sys.stderr.isatty()
        self.last = ""

    def show(self, done: float, note: str = "") -> None:
        width = 30
        filled = int(width * min(done, self.total) / self.total)
        amount = f"{human_bytes(done)}/{human_bytes(self.total)}" if self.unit == "B" else f"{done:g}/{self.total:g}"
        line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {amount} {note}".rstrip()
        if line == self.last:
            return
        self.last = line
        sys.stderr.write("\r" + line + " " * 8 if self.tty else line + "\n")
        sys.stderr.flush()

    def say(self, text: str) -> None:
        """A line of its own on stderr; the bar is drawn again on its next change."""
        sys.stderr.write(("\r" + " " * (len(self.last) + 8) + "\r" if self.tty else "") + text + "\n")
        sys.stderr.flush()
        if self.tty:
            self.last = ""

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
