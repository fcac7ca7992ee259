"""Ctrl-C stays Ctrl-C, whatever error it comes out as.

Python raises KeyboardInterrupt wherever the main thread happens to be. Inside a C extension it can come out as
another error: torch.save interrupted mid-write fails its end-of-file check and raises
``RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos`` instead. Taken as it looks, that Ctrl-C
would be the trial's own failure (not retried, its run FAILED) or a traceback from ``ftlab train``. So the processes
that train (the CLI, each trial process) remember that Ctrl-C came, and what fails after it is counted as Ctrl-C.
"""

from __future__ import annotations

import threading

_received = threading.Event()  # Ctrl-C reached this process (through raise_interrupt)


def raise_interrupt(signum: int, frame: object) -> None:
    """A SIGINT handler that does what Python's own does (raise KeyboardInterrupt) and remembers that it did."""
    _received.set()
    raise KeyboardInterrupt


def as_interrupt(error: BaseException) -> BaseException:
    """``error`` as a KeyboardInterrupt (caused by it) once Ctrl-C has reached this process; else ``error`` itself."""
    if isinstance(error, KeyboardInterrupt) or not _received.is_set():
        return error
    interrupt = KeyboardInterrupt()
    interrupt.__cause__ = error
    return interrupt
