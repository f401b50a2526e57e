"""One llama.cpp quantization in a process of its own, which the run that started it kills when it is interrupted.

`python -m ropeconv.gguf_export.quantize_child PARENT_PID` reads a pickled `Request` from stdin (written by
ropeconv.gguf_export.quantize, its parent), runs llama_model_quantize with llama.cpp's log captured, and writes
`{"status": int, "reason": str}` as JSON to its stdout.

Why a process: Python runs a signal handler only between bytecodes, so a signal cannot stop llama.cpp while it
quantizes, and a raise that lands in llama.cpp's log callback (a ctypes callback) is swallowed — in-process, an
interrupted run quantized to the end and published. The parent kills this process when a signal interrupts it;
if the parent itself is killed outright, this process dies with it (PR_SET_PDEATHSIG). SIGINT and SIGQUIT from
the terminal (sent to the whole process group) are ignored here: the parent decides, and kills it.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import signal
import sys
from dataclasses import dataclass
from typing import Any

_KV_OVERRIDE_INT, _KV_OVERRIDE_STR = 0, 3  # llama_model_kv_override_type: INT, FLOAT, BOOL, STR
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Request:
    src: str  # the float GGUF
    dst: str  # the quantized file
    outtype: str  # llama-quantize's name, lower case
    imatrix: Any = None  # a ropeconv.gguf_export.quantize.Imatrix, or None
    threads: int = 0  # 0: llama.cpp's default (every core)


def ftype_of(outtype: str) -> int:
    import llama_cpp

    return int(getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{outtype.upper()}"))


def run(request: Request) -> tuple[int, str]:
    """llama_model_quantize in this process: (its status, llama.cpp's first error, or "" when status is 0)."""
    import llama_cpp
    import numpy as np

    from ropeconv.llamacpp_log import captured_log, first_error

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_of(request.outtype)
    params.nthread = request.threads
    keep_alive = []  # the arrays the C side reads during the call
    imatrix = request.imatrix
    if imatrix is not None:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix.entries) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.entries.items())):
            values = np.ascontiguousarray(values, dtype=np.float32)
            keep_alive += [values, name.encode()]
            entries[i].name = keep_alive[-1]
            entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = values.size
        entries[len(imatrix.entries)].name = None  # the terminator
        params.imatrix = entries
        overrides = _imatrix_keys(llama_cpp, imatrix)
        params.kv_overrides = overrides
        keep_alive += [entries, overrides]
    with captured_log(llama_cpp) as lines:
        status = llama_cpp.llama_model_quantize(request.src.encode(), request.dst.encode(), ctypes.byref(params))
    return status, (first_error(lines, f"llama_model_quantize returned {status}") if status else "")


def _imatrix_keys(llama_cpp, imatrix):
    """The quantize.imatrix.* keys llama-quantize writes (the file's name, not its local path)."""
    values: list[tuple[str, int, Any]] = [("quantize.imatrix.file", _KV_OVERRIDE_STR, imatrix.file_name)]
    if imatrix.datasets:
        values.append(("quantize.imatrix.dataset", _KV_OVERRIDE_STR, imatrix.datasets[0]))
    values.append(("quantize.imatrix.entries_count", _KV_OVERRIDE_INT, len(imatrix.entries)))
    if imatrix.chunks > 0:
        values.append(("quantize.imatrix.chunks_count", _KV_OVERRIDE_INT, imatrix.chunks))
    overrides = (llama_cpp.llama_model_kv_override * (len(values) + 1))()
    for slot, (key, tag, value) in zip(overrides, values):
        slot.key, slot.tag = key.encode(), tag
        if tag == _KV_OVERRIDE_STR:
            slot.value.val_str = str(value).encode()[:127]
        else:
            slot.value.val_i64 = int(value)
    overrides[len(values)].key = b""  # the terminator: an empty key
    return overrides


def _die_with(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux); exit now if the parent is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent still kills this process when it is interrupted
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def main(argv: list[str]) -> int:
    _die_with(int(argv[0]))
    for name in ("SIGINT", "SIGQUIT"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    result = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything native code prints goes to stderr, which the parent reads; stdout carries the result
    request = pickle.load(sys.stdin.buffer)  # written by this process's parent, ropeconv itself
    status, reason = run(request)
    json.dump({"status": int(status), "reason": reason}, result)
    result.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
