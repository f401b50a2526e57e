"""llama.cpp's log routed into Python while a call runs: the parity runtime and the quantizer both turn it into
one message instead of raw lines on stderr. A signal whose handler runs inside the log callback (native code calls
it; a raise there would be swallowed) is raised again when the block ends."""

from __future__ import annotations

import contextlib
import ctypes
import re
from collections.abc import Iterator

from ropeconv.interrupts import native_callback, raise_if_interrupted

# ggml's enum since late 2024: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5. (llama-cpp-python 0.3.36's
# _logger still maps the older order, INFO 1 … ERROR 3, DEBUG 4, so with verbose=False it prints llama.cpp's
# warnings, e.g. "n_ctx_seq (8704) > n_ctx_train (8192)", and drops its errors: one more reason to capture.)
GGML_LOG_LEVEL_ERROR = 4
GGML_LOG_LEVEL_CONT = 5


@contextlib.contextmanager
def captured_log(llama_cpp) -> Iterator[list[tuple[int, str]]]:
    """Route llama.cpp's log into a list of (level, text) for the duration, then restore the package's callback.

    With verbose=False llama-cpp-python drops everything below ERROR, but errors (a rejected batch) would
    still reach stderr as raw lines, and during a load it discards them, root cause included; the caller
    turns them into one message instead.
    """
    lines: list[tuple[int, str]] = []

    @llama_cpp.llama_log_callback
    @native_callback  # a signal landing here is raised when the block ends
    def collect(level: int, text: bytes, user_data) -> None:  # noqa: ARG001
        message = text.decode("utf-8", "replace")
        if level == GGML_LOG_LEVEL_CONT and lines:
            lines[-1] = (lines[-1][0], lines[-1][1] + message)
        else:
            lines.append((level, message))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    raise_if_interrupted()  # the first safe point after the native calls the block made


def first_error(lines: list[tuple[int, str]], fallback: str) -> str:
    """The root cause: llama.cpp logs it first and then each caller's "failed" on top."""
    texts = [(level, " ".join(text.split())) for level, text in lines]
    errors = [t for level, t in texts if level == GGML_LOG_LEVEL_ERROR and t]
    # older ggml numbered ERROR 3; fall back to the wording
    errors = errors or [t for _, t in texts if "error" in t.lower() or "failed" in t.lower()]
    return re.sub(r"^\w+: ", "", errors[0]) if errors else fallback
