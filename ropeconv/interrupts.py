"""Signals that end a run: SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 all interrupt it the same way.

The handler raises `Interrupted` (a KeyboardInterrupt, so every staging cleanup that catches BaseException
runs) and records the signal first. A raise that lands inside a ctypes callback (llama.cpp's log) or a `__del__`
is swallowed by the interpreter (a traceback printed, the signal lost), so there — in a `__del__`, or in a
function marked `native_callback` — the handler only records, and the next safe point raises it through
`raise_if_interrupted()`: llama.cpp's log capture when the native call returns, staging right before it
publishes, the CLI when the command returns. The exit code is the shell's 128 + the signal's number (130
SIGINT, 143 SIGTERM, 129 SIGHUP, 131 SIGQUIT, 138 SIGUSR1, 140 SIGUSR2).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import CodeType
from typing import TypeVar

CATCHABLE: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name))
SIGINT_EXIT = 128 + signal.SIGINT  # what a KeyboardInterrupt that no signal raised (Ctrl-C in a REPL, a test) exits

_received: list[int] = []  # the signals that arrived while the handlers were installed, oldest first
_recorded_only: set[CodeType] = set()  # functions native code calls back (native_callback)
T = TypeVar("T")


class Interrupted(KeyboardInterrupt):
    """A signal ended the run; nothing is published after it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def native_callback(function: Callable[..., T]) -> Callable[..., T]:
    """Mark a function that native code calls (a ctypes callback): a signal whose handler runs in it is recorded,
    not raised — ctypes would swallow the raise and print a traceback — and raise_if_interrupted() raises it."""
    _recorded_only.add(function.__code__)
    return function


def _on_signal(signum: int, frame) -> None:
    _received.append(signum)  # first: the raise below may be swallowed where it lands
    if frame is not None and (frame.f_code in _recorded_only or frame.f_code.co_name == "__del__"):
        return  # a raise here would be swallowed (and a traceback printed): the next check raises it
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise Interrupted when a signal arrived whose raise may have been swallowed (call before publishing)."""
    if _received:
        raise Interrupted(_received[0])


def exit_code(exc: BaseException) -> int:
    """128 + the signal behind `exc` (or behind what it was raised from: click turns a KeyboardInterrupt into an
    Abort); 130 for a KeyboardInterrupt no handler raised."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, Interrupted):
            return link.exit_code
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return 128 + _received[0] if _received else SIGINT_EXIT


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Every catchable signal interrupts the run while the block runs (main thread only; elsewhere the
    process's handlers are left as they are)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {signum: signal.signal(signum, _on_signal) for signum in CATCHABLE}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _received.clear()
