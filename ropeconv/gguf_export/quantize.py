"""ropeconv's float GGUF ─► llama.cpp's own quantizer (k-quants, i-quants, the legacy block types).

llama_model_quantize — llama-cpp-python's binding of the function behind `llama-quantize` — reads the float
conversion staged beside the output and writes the quantized file. Everything about the quantization is
llama.cpp's: the tensor type per ftype (Q4_K_M puts Q6_K on half the attn_v/ffn_down tensors and on the
output matrix, falls back to Q5_0/Q8_0 where a row is not a multiple of 256, …), which tensors it leaves alone
(1-D tensors — norms, biases, the rope_freqs / rope_factors_* carriers — and position tables stay as staged,
F32), and the metadata, copied key for key (ropeconv.* included) with general.file_type set to the ftype.
It runs in a child process (ropeconv.gguf_export.quantize_child) that a signal to the run kills: nothing is
quantized on, or published, after one.

An importance matrix (`--imatrix FILE`, what `llama-imatrix` writes: GGUF, or the legacy .dat) is read the way
llama.cpp's common_imatrix_load and llama-quantize's load_imatrix read it — per-entry sums divided by their
counts — and handed over as the array of {name, values, size} the quantizer takes; llama-quantize's
quantize.imatrix.* keys record it in the file.
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import os
import pickle
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import ropeconv
from ropeconv.errors import InputError, UnsupportedError
from ropeconv.formats.gguf import QUANT_TYPES as GGUF_QUANT_TYPES
from ropeconv.gguf_export import quantize_child
from ropeconv.inputfile import open_regular
from ropeconv.interrupts import raise_if_interrupted

# a legacy entry: name length, a name of at least 1 byte, ncall, nval, at least one value
_LEGACY_ENTRY_MIN_BYTES = 4 + 1 + 4 + 4 + 4
_LEGACY_NAME_MAX_BYTES = 4096  # GGUF tensor names are at most 64 bytes (GGML_MAX_NAME)
QUANT_TYPES = GGUF_QUANT_TYPES  # llama-quantize's names, lower case (declared by formats.gguf, the CLI reads them there)
# ftypes whose default tensor type llama.cpp quantizes only with an importance matrix (tensor_requires_imatrix:
# IQ3_XXS, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_M, IQ1_S, and Q2_K inside a Q2_K_S file)
NEEDS_IMATRIX = frozenset({"q2_k_s", "iq3_xxs", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq1_s", "iq1_m"})


@dataclass(frozen=True)
class Imatrix:
    """Per tensor (GGUF name) the mean squared activation of each input column (× experts)."""

    file_name: str
    entries: dict[str, np.ndarray]  # float32
    datasets: tuple[str, ...] = ()
    chunks: int = 0


def load_imatrix(path: Path) -> Imatrix:
    path = Path(path)
    if not path.exists():
        raise InputError(f"--imatrix {path}: file not found")
    try:
        fh = open_regular(path)  # a FIFO or a device is refused here, before anything reads from it
    except InputError as exc:
        raise InputError(f"--imatrix {exc}") from None
    with fh:
        try:
            magic = fh.read(4)
            return _load_gguf(path) if magic == b"GGUF" else _load_legacy(path, fh)
        except InputError:
            raise
        except (ValueError, struct.error, IndexError, KeyError) as exc:
            raise InputError(f"--imatrix {path}: not an importance matrix llama.cpp reads ({exc})") from None
        except OSError as exc:
            raise InputError(f"--imatrix {path}: cannot read ({exc.strerror or exc})") from None


def _load_gguf(path: Path) -> Imatrix:
    """llama-imatrix's GGUF: <tensor>.in_sum2 and <tensor>.counts (F32) per tensor, imatrix.* metadata."""
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(path)
    fields = {f.name: f for f in reader.fields.values()}
    if not {"imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"} <= set(fields):
        raise InputError(f"--imatrix {path}: missing imatrix metadata (imatrix.datasets, chunk_count, chunk_size), "
                         "which llama-quantize requires")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        for suffix, into in ((".in_sum2", sums), (".counts", counts)):
            if t.name.endswith(suffix):
                if t.tensor_type != GGMLQuantizationType.F32:
                    raise InputError(f"--imatrix {path}: {t.name} must be F32")
                into[t.name[: -len(suffix)]] = np.asarray(t.data, dtype=np.float32).reshape(-1)
    if not sums or set(sums) != set(counts):
        raise InputError(f"--imatrix {path}: mismatched or missing .in_sum2 / .counts tensors")
    entries = {}
    for name, total in sums.items():
        count = np.rint(counts[name]).astype(np.float32)  # llama.cpp: std::lround
        per_expert = total.reshape(len(count), -1)
        safe = np.where(count > 0, count, 1.0)[:, None]
        entries[name] = np.where(count[:, None] > 0, per_expert / safe, 1.0).astype(np.float32).reshape(-1)
    datasets = fields["imatrix.datasets"]
    names = tuple(bytes(datasets.parts[i]).decode("utf-8", "replace") for i in datasets.data)
    chunks = int(fields["imatrix.chunk_count"].parts[-1][0])
    return Imatrix(path.name, entries, names, chunks)


def _load_legacy(path: Path, fh) -> Imatrix:
    """The .dat format: n, then per entry (name length, name, ncall, nval, nval floats), then optionally the
    chunk count and dataset name; values are divided by ncall. The file is mapped, not read: every count and
    length is checked against the file's size before the bytes it names are touched."""
    size = os.fstat(fh.fileno()).st_size
    if size < 4:
        raise InputError(f"--imatrix {path}: {size} bytes, too short for an importance matrix")
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        (n,), at = struct.unpack_from("<i", data, 0), 4
        if n < 1:
            raise InputError(f"--imatrix {path}: no entries")
        if n > (size - at) // _LEGACY_ENTRY_MIN_BYTES:
            raise InputError(f"--imatrix {path}: {n} entries declared, more than its {size} bytes can hold")
        entries = {}
        for i in range(n):
            room = min(_LEGACY_NAME_MAX_BYTES, size - at - 4)
            length = _legacy_count(path, data, at, f"entry {i}'s name length", room)
            name = bytes(data[at + 4 : at + 4 + length]).decode("utf-8")
            at += 4 + length
            (ncall,) = struct.unpack_from("<i", data, at)
            nval = _legacy_count(path, data, at + 4, f"entry {name!r}'s value count", (size - at - 8) // 4)
            at += 8
            values = np.frombuffer(bytes(data[at : at + 4 * nval]), dtype="<f4").astype(np.float32)
            at += 4 * nval
            entries[name] = values / ncall if ncall > 0 else values
        datasets: tuple[str, ...] = ()
        chunks = 0
        if at + 4 <= size:
            (chunks,) = struct.unpack_from("<i", data, at)
            if at + 8 <= size:
                (length,) = struct.unpack_from("<i", data, at + 4)
                shown = min(max(length, 0), size - at - 8, _LEGACY_NAME_MAX_BYTES)  # the key keeps 127 bytes anyway
                if shown > 0:
                    datasets = (bytes(data[at + 8 : at + 8 + shown]).decode("utf-8", "replace"),)
    return Imatrix(path.name, entries, datasets, chunks)


def _legacy_count(path: Path, data, at: int, what: str, most: int) -> int:
    """An int32 count at `at` that must be at least 1 and at most `most` (what the rest of the file can hold)."""
    if at + 4 > len(data):
        raise InputError(f"--imatrix {path}: ends before {what}")
    (count,) = struct.unpack_from("<i", data, at)
    if not 1 <= count <= most:
        raise InputError(f"--imatrix {path}: {what} is {count}, outside 1..{max(most, 0)} (what the file holds)")
    return count


def check_imatrix(imatrix: Imatrix, rows_of: dict[str, int]) -> None:
    """Entries for tensors the GGUF holds must be whole rows of it (llama.cpp aborts mid-file otherwise).
    rows_of: GGUF tensor name → its row length (ne0)."""
    for name, values in imatrix.entries.items():
        n = rows_of.get(name)
        if n is not None and values.size % n:
            raise InputError(f"--imatrix {imatrix.file_name}: {name} has {values.size} values, not a multiple of "
                             f"its row length {n} (an importance matrix of another model?)")
    if not any(name in rows_of for name in imatrix.entries):
        raise InputError(f"--imatrix {imatrix.file_name}: none of its {len(imatrix.entries)} entries names a tensor "
                         "of this model")


def quantize(src: Path, dst: Path, outtype: str, imatrix: Imatrix | None = None, threads: int = 0) -> None:
    """llama.cpp quantizes src (a float GGUF) into dst, in a child process that is killed when a signal interrupts
    the run (ropeconv.gguf_export.quantize_child says why): after a signal nothing is quantized on, and dst is
    removed."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise InputError(f"--outtype {outtype} runs llama.cpp's quantizer: pip install 'ropeconv[gguf]'")
    request = quantize_child.Request(str(src), str(dst), outtype, imatrix, threads)
    try:
        status, reason = _in_child(request)
        raise_if_interrupted()  # a signal whose raise was swallowed while the child ran
    except BaseException:
        Path(dst).unlink(missing_ok=True)
        raise
    if status != 0:
        Path(dst).unlink(missing_ok=True)
        if "imatrix" in reason:
            raise InputError(f"llama.cpp cannot quantize to {outtype.upper()}: {reason} (pass --imatrix FILE)")
        raise UnsupportedError(f"llama.cpp cannot quantize to {outtype.upper()}: {reason}")


def _in_child(request: quantize_child.Request) -> tuple[int, str]:
    """Run quantize_child on `request`: (llama_model_quantize's status, its first error). The child is killed and
    reaped whatever ends the wait (a signal's Interrupted included)."""
    package_root = str(Path(ropeconv.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
    with subprocess.Popen([sys.executable, "-m", quantize_child.__name__, str(os.getpid())], env=env,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        try:  # leaving the block closes the child's pipes, whatever ended the wait
            out, err = child.communicate(payload)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    try:
        result = json.loads(out)
        return int(result["status"]), str(result["reason"])
    except (ValueError, KeyError, TypeError):
        pass
    raise_if_interrupted()
    how = f"killed by signal {-child.returncode}" if child.returncode < 0 else f"exit {child.returncode}"
    said = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
    raise UnsupportedError(f"llama.cpp's quantizer stopped ({how}) before it finished {request.outtype.upper()}"
                           + (f": {' '.join(said[-1].split())}" if said else ""))
