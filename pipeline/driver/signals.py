"""SIGINT and SIGTERM as a request to stop a live run cleanly (every frame read is written) rather
than an interruption. Imports nothing heavy: ``anomstream live`` installs it before it imports
Ray and torch, so a signal in the seconds a run takes to start is not lost."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def stop_on_signals(stop: threading.Event, enabled: bool) -> Iterator[Callable[[], None]]:
    """While inside: SIGINT and SIGTERM set ``stop`` instead of raising; a second signal raises
    KeyboardInterrupt (interrupts at once). Yields ``install``, to call again after ``ray.init``
    (which sets handlers of its own). Does nothing when not ``enabled`` or off the main thread
    (Python runs handlers there only). The handlers before it are restored on the way out."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    def install() -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, handle)

    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    install()
    try:
        yield install
    finally:
        for number, handler in previous.items():  # None: one set outside Python, which cannot be set back
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
