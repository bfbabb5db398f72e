"""The one place the aggregator starts threads: daemon workers and deadline timers."""

from __future__ import annotations

import threading
from collections.abc import Callable


def spawn(name: str, target: Callable[..., object], *args: object) -> None:
    """Runs ``target(*args)`` in a daemon thread named ``name``."""
    threading.Thread(target=target, args=args, daemon=True, name=name).start()


def after(delay_s: float, target: Callable[..., object], *args: object) -> threading.Timer:
    """Runs ``target(*args)`` in a daemon thread once ``delay_s`` seconds have passed, unless
    the returned timer is cancelled first."""
    timer = threading.Timer(delay_s, target, args=args)
    timer.daemon = True
    timer.start()
    return timer
