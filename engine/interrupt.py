"""SIGINT and SIGTERM end a run with one line instead of a traceback or silence.

While :func:`signals_as_interrupt` is active, SIGTERM raises :class:`Interrupted` (a
``KeyboardInterrupt``, as SIGINT does) in the main thread. Every write in progress is then
rolled back by the ``except`` of :func:`engine.fileio.atomic_write` (the previous file is kept,
the temporary one removed), the trainer's ``after_train`` hooks close their files, and
:func:`engine.runner.run` turns it into :class:`RunInterrupted`: ``interrupted at iteration N;
continue with --resume``, exit status 128 + the signal's number. Further signals during that
clean-up are ignored, so it cannot itself be cut short.

A handler someone else installed is left alone: under submitit (SLURM jobs) SIGTERM stays
submitit's, which keeps the requeue behaviour of :mod:`engine.slurm`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Interrupted", "RunInterrupted", "signals_as_interrupt"]


class Interrupted(KeyboardInterrupt):
    """Raised by the handler; ``signum`` is the signal received."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunInterrupted(Exception):
    """A run stopped by a signal, after its clean-up; ``exit_code`` is 128 + the signal."""

    def __init__(self, iteration: int, signum: int = signal.SIGINT) -> None:
        super().__init__(f"interrupted at iteration {iteration}; continue with --resume")
        self.iteration, self.signum, self.exit_code = iteration, signum, 128 + int(signum)


@contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """Install the handler for SIGINT and SIGTERM where Python's defaults are in place (main
    thread only); restore the previous handlers on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        raise Interrupted(signum)

    previous = {}
    for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        current = signal.getsignal(sig)
        if current is default or current is signal.SIG_DFL:
            previous[sig] = current
            signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
