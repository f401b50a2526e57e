"""ropeconv's float GGUF ─► llama.cpp's own quantizer (k-quants, i-quants, the legacy block types).

llama_model_quantize — llama-cpp-python's binding of the function behind `llama-quantize` — reads the float
conversion staged beside the output and writes the quantized file. Everything about the quantization is
llama.cpp's: the tensor type per ftype (Q4_K_M puts Q6_K on half the attn_v/ffn_down tensors and on the
output matrix, falls back to Q5_0/Q8_0 where a row is not a multiple of 256, …), which tensors it leaves alone
(1-D tensors — norms, biases, the rope_freqs / rope_factors_* carriers — and position tables stay as staged,
F32), and the metadata, copied key for key (ropeconv.* included) with general.file_type set to the ftype.

An importance matrix (`--imatrix FILE`, what `llama-imatrix` writes: GGUF, or the legacy .dat) is read the way
llama.cpp's common_imatrix_load and llama-quantize's load_imatrix read it — per-entry sums divided by their
counts — and handed over as the array of {name, values, size} the quantizer takes; llama-quantize's
quantize.imatrix.* keys record it in the file.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ropeconv.errors import InputError, UnsupportedError
from ropeconv.formats import GGUF_QUANT_TYPES

QUANT_TYPES = GGUF_QUANT_TYPES  # llama-quantize's names, lower case (kept in ropeconv.formats for the CLI)
# ftypes whose default tensor type llama.cpp quantizes only with an importance matrix (tensor_requires_imatrix:
# IQ3_XXS, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_M, IQ1_S, and Q2_K inside a Q2_K_S file)
NEEDS_IMATRIX = frozenset({"q2_k_s", "iq3_xxs", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq1_s", "iq1_m"})

_KV_OVERRIDE_INT, _KV_OVERRIDE_STR = 0, 3  # llama_model_kv_override_type: INT, FLOAT, BOOL, STR


@dataclass(frozen=True)
class Imatrix:
    """Per tensor (GGUF name) the mean squared activation of each input column (× experts)."""

    file_name: str
    entries: dict[str, np.ndarray]  # float32
    datasets: tuple[str, ...] = ()
    chunks: int = 0


def ftype_of(outtype: str) -> int:
    import llama_cpp

    return int(getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{outtype.upper()}"))


def load_imatrix(path: Path) -> Imatrix:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--imatrix {path}: file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    try:
        return _load_gguf(path) if magic == b"GGUF" else _load_legacy(path)
    except InputError:
        raise
    except (ValueError, struct.error, IndexError, KeyError) as exc:
        raise InputError(f"--imatrix {path}: not an importance matrix llama.cpp reads ({exc})") from None


def _load_gguf(path: Path) -> Imatrix:
    """llama-imatrix's GGUF: <tensor>.in_sum2 and <tensor>.counts (F32) per tensor, imatrix.* metadata."""
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(path)
    fields = {f.name: f for f in reader.fields.values()}
    if not {"imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"} <= set(fields):
        raise InputError(f"--imatrix {path}: missing imatrix metadata (imatrix.datasets, chunk_count, chunk_size), "
                         "which llama-quantize requires")
    sums, counts = {}, {}
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


def _load_legacy(path: Path) -> Imatrix:
    """The .dat format: n, then per entry (name length, name, ncall, nval, nval floats), then optionally the
    chunk count and dataset name; values are divided by ncall."""
    data = path.read_bytes()
    (n,), at = struct.unpack_from("<i", data, 0), 4
    if n < 1:
        raise InputError(f"--imatrix {path}: no entries")
    entries = {}
    for _ in range(n):
        (length,) = struct.unpack_from("<i", data, at)
        name = data[at + 4 : at + 4 + length].decode("utf-8")
        at += 4 + length
        ncall, nval = struct.unpack_from("<ii", data, at)
        at += 8
        if nval < 1:
            raise InputError(f"--imatrix {path}: entry {name!r} has no values")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=at).astype(np.float32)
        at += 4 * nval
        entries[name] = values / ncall if ncall > 0 else values
    datasets: tuple[str, ...] = ()
    chunks = 0
    if at + 4 <= len(data):
        (chunks,) = struct.unpack_from("<i", data, at)
        if at + 8 <= len(data):
            (length,) = struct.unpack_from("<i", data, at + 4)
            if length > 0:
                datasets = (data[at + 8 : at + 8 + length].decode("utf-8", "replace"),)
    return Imatrix(path.name, entries, datasets, chunks)


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
    """llama.cpp quantizes src (a float GGUF) into dst."""
    try:
        import llama_cpp
    except ImportError:
        raise InputError(f"--outtype {outtype} runs llama.cpp's quantizer: pip install 'ropeconv[gguf]'") from None
    from ropeconv.llamacpp_log import captured_log, first_error

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_of(outtype)
    params.nthread = threads
    keep_alive = []  # the arrays the C side reads during the call
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
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0:
        dst.unlink(missing_ok=True)
        reason = first_error(lines, f"llama_model_quantize returned {status}")
        if "imatrix" in reason:
            raise InputError(f"llama.cpp cannot quantize to {outtype.upper()}: {reason} (pass --imatrix FILE)")
        raise UnsupportedError(f"llama.cpp cannot quantize to {outtype.upper()}: {reason}")


def _imatrix_keys(llama_cpp, imatrix: Imatrix):
    """The quantize.imatrix.* keys llama-quantize writes (the file's name, not its local path)."""
    values: list[tuple[str, int, object]] = [("quantize.imatrix.file", _KV_OVERRIDE_STR, imatrix.file_name)]
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
