"""What a GGUF header holds, with the standard library only: KV pairs to serialize (NewField) and tensor infos
(TensorInfo). A GGUF plan is made of these before any byte is written (a dry run stops there), so planning imports
neither numpy nor gguf-py; the writer (writer.py) takes them as they are."""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv.errors import InputError
from ropeconv.gguf_io.reader import MAX_DIMS, SCALAR_FORMATS, STRING_ERRORS, GgufField, GgufTensor
from ropeconv.gguf_io.types import GGMLQuantizationType, GGUFValueType

INT_RANGES = {
    GGUFValueType.UINT8: (0, 2**8 - 1), GGUFValueType.INT8: (-(2**7), 2**7 - 1),
    GGUFValueType.UINT16: (0, 2**16 - 1), GGUFValueType.INT16: (-(2**15), 2**15 - 1),
    GGUFValueType.UINT32: (0, 2**32 - 1), GGUFValueType.INT32: (-(2**31), 2**31 - 1),
    GGUFValueType.UINT64: (0, 2**64 - 1), GGUFValueType.INT64: (-(2**63), 2**63 - 1),
}  # fmt: skip
# numpy dtype name → GGUF type of an array written as is
NUMPY_TO_GGML = {
    "float32": GGMLQuantizationType.F32, "float16": GGMLQuantizationType.F16, "float64": GGMLQuantizationType.F64,
    "int8": GGMLQuantizationType.I8, "int16": GGMLQuantizationType.I16, "int32": GGMLQuantizationType.I32,
    "int64": GGMLQuantizationType.I64,
}  # fmt: skip


@dataclass(frozen=True)
class NewField:
    """A KV pair to serialize (as opposed to a GgufField copied verbatim)."""

    key: str
    value_type: GGUFValueType
    value: object
    item_type: GGUFValueType | None = None  # required when value_type is ARRAY

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "value_type", GGUFValueType(self.value_type))
            if self.item_type is not None:
                object.__setattr__(self, "item_type", GGUFValueType(self.item_type))
        except ValueError:
            raise InputError(f"GGUF key {self.key!r}: unknown value type {self.value_type!r}") from None

    def pack(self) -> bytes:
        if self.value_type == GGUFValueType.ARRAY:
            if self.item_type is None or self.item_type == GGUFValueType.ARRAY:
                raise InputError(f"GGUF key {self.key!r}: an array needs a scalar or STRING item type")
            if not isinstance(self.value, (list, tuple)):
                raise InputError(f"GGUF key {self.key!r}: ARRAY value must be a list, got {type(self.value).__name__}")
            body = struct.pack("<IQ", self.item_type, len(self.value))
            body += _pack_items(self.key, self.item_type, self.value)
        else:
            if self.item_type is not None:
                raise InputError(f"GGUF key {self.key!r}: item type given for a {self.value_type.name}")
            body = _pack_value(self.key, self.value_type, self.value)
        return pack_string(self.key, strict=True) + struct.pack("<I", self.value_type) + body


KvEntry = GgufField | NewField


def pack_string(s: str, strict: bool = False) -> bytes:
    data = s.encode("utf-8", "strict" if strict else STRING_ERRORS)
    return struct.pack("<Q", len(data)) + data


def _pack_items(key: str, item_type: GGUFValueType, values: list | tuple) -> bytes:
    """An array's items: a vocabulary is 3 arrays of ~32k–150k items, packed in one call each where every item
    is a plain str / float / int in range (the same bytes as _pack_value's, which checks and packs the rest)."""
    fmt = SCALAR_FORMATS.get(item_type, "")  # "": STRING, which has no struct format
    try:
        if item_type == GGUFValueType.STRING and all(type(v) is str for v in values):
            data = [v.encode("utf-8", STRING_ERRORS) for v in values]
            return b"".join(part for d in data for part in (len(d).to_bytes(8, "little"), d))
        if item_type in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64) \
                and all(type(v) is float or type(v) is int for v in values):
            return struct.pack(f"<{len(values)}{fmt[-1]}", *values)
        if item_type in INT_RANGES and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return struct.pack(f"<{len(values)}{fmt[-1]}", *values)
    except (OverflowError, struct.error):
        pass  # out of range: the item-by-item path names the value
    return b"".join(_pack_value(key, item_type, v) for v in values)


def _numpy_scalars() -> tuple[tuple[type[Any], ...], tuple[type[Any], ...], tuple[type[Any], ...]]:
    """numpy's bool, integer and floating scalar types (a value can be one only once numpy is imported)."""
    np = sys.modules.get("numpy")
    return ((np.bool_,), (np.integer,), (np.floating,)) if np is not None else ((), (), ())


def _pack_value(key: str, value_type: GGUFValueType, value: object) -> bytes:
    where = f"GGUF key {key!r}"
    np_bool, np_int, np_float = _numpy_scalars()
    # typed tuples: mypy joins a tuple display of bool and type[Any] to object, and would narrow value to it
    bools: tuple[type[Any], ...] = (bool, *np_bool)
    ints: tuple[type[Any], ...] = (int, *np_int)
    numbers: tuple[type[Any], ...] = (int, float, *np_int, *np_float)
    if value_type == GGUFValueType.STRING:
        if not isinstance(value, str):
            raise InputError(f"{where}: STRING value must be a str, got {type(value).__name__}")
        return pack_string(value)
    if value_type == GGUFValueType.BOOL:
        if not isinstance(value, bools):
            raise InputError(f"{where}: BOOL value must be a bool, got {type(value).__name__}")
        return struct.pack("<B", int(value))
    if value_type in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        if isinstance(value, bools) or not isinstance(value, numbers):
            raise InputError(f"{where}: {value_type.name} value must be a number, got {type(value).__name__}")
        try:
            return struct.pack(SCALAR_FORMATS[value_type], float(value))
        except OverflowError:
            raise InputError(f"{where}: {value} does not fit {value_type.name}") from None
    if value_type in INT_RANGES:
        # a float, even an integral one, is refused: it usually means the wrong type was chosen
        if isinstance(value, bools) or not isinstance(value, ints):
            raise InputError(f"{where}: {value_type.name} value must be an int, got {type(value).__name__}")
        low, high = INT_RANGES[value_type]
        if not low <= int(value) <= high:
            raise InputError(f"{where}: {value} does not fit {value_type.name}")
        return struct.pack(SCALAR_FORMATS[value_type], int(value))
    raise InputError(f"{where}: cannot serialize a value of type {value_type!r}")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order, ne0 first
    ggml_type: GGMLQuantizationType
    nbytes: int

    @classmethod
    def of(cls, tensor: GgufTensor) -> TensorInfo:
        return cls(tensor.name, tensor.shape, tensor.ggml_type, tensor.nbytes)

    @classmethod
    def of_array(cls, name: str, array: Any) -> TensorInfo:
        return cls(name, tuple(reversed(array.shape)), ggml_type_of_array(name, array), array.nbytes)


@dataclass(frozen=True)
class ByteRange:
    file: Path
    offset: int
    nbytes: int


def ggml_type_of_array(name: str, array: Any) -> GGMLQuantizationType:
    ggml_type = NUMPY_TO_GGML.get(array.dtype.name)
    if ggml_type is None:
        raise InputError(f"tensor {name!r}: numpy dtype {array.dtype} has no GGUF type")
    if not 1 <= array.ndim <= MAX_DIMS:
        raise InputError(f"tensor {name!r}: {array.ndim} dimensions (GGUF takes 1 to {MAX_DIMS})")
    return ggml_type
