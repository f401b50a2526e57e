"""Read an ONNX model's metadata_props without reading its graph or weights.

A ModelProto is a sequence of top-level fields; every one but metadata_props (field 14) is skipped
by its length, so a 2 GB single-file model costs a few reads, where onnx.load would parse it all. Each
entry (StringStringEntryProto: key = 1, value = 2, both strings) is decoded here too, so `ropeconv
inspect model.onnx` never imports onnx (or its protobuf runtime).
"""

from __future__ import annotations

from pathlib import Path

from ropeconv.errors import InputError
from ropeconv.positions import PositionPlan
from ropeconv.provenance import DTYPE_KEY, plan_in

_METADATA_PROPS = 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


def _varint(f) -> int:
    shift = result = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise EOFError
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(f, end: int, on_bytes) -> None:
    """Walk the fields up to offset `end`: varints and fixed-width values are skipped, each length-delimited one
    is handed to on_bytes(field, length), which reads or skips exactly `length` bytes."""
    while f.tell() < end:
        key = _varint(f)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _varint(f)
        elif wire == 2:
            length = _varint(f)
            if f.tell() + length > end:
                raise ValueError("a field runs past its end")
            on_bytes(field, length)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if f.tell() + width > end:
                raise ValueError("a field runs past its end")
            f.seek(width, 1)
        else:
            raise ValueError(f"wire type {wire}")


def _entry(raw: bytes) -> tuple[str, str]:
    """A StringStringEntryProto's key and value, as protobuf reads them: a field given twice keeps its last
    value, unknown fields are skipped, and a string that is not UTF-8 is an error."""
    import io

    f = io.BytesIO(raw)
    fields = {_ENTRY_KEY: b"", _ENTRY_VALUE: b""}

    def take(field: int, length: int) -> None:
        data = f.read(length)
        if field in fields:
            fields[field] = data

    _fields(f, len(raw), take)
    try:
        return fields[_ENTRY_KEY].decode("utf-8"), fields[_ENTRY_VALUE].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("a metadata string is not UTF-8") from None


def read_metadata(path: Path) -> dict[str, str]:
    path = Path(path)
    props: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            def take(field: int, length: int) -> None:
                if field == _METADATA_PROPS:
                    name, value = _entry(f.read(length))
                    props[name] = value
                else:
                    f.seek(length, 1)

            _fields(f, path.stat().st_size, take)
    except (EOFError, ValueError) as exc:
        raise InputError(f"{path}: not a readable ONNX model ({exc or 'truncated'})") from None
    return props


def read_dtype(path: Path) -> str | None:
    """The --dtype the export recorded (fp32, fp16, int4), or None where it recorded none."""
    return read_metadata(Path(path)).get(DTYPE_KEY)


def read_plan(path: Path) -> tuple[PositionPlan | None, dict[str, str]]:
    """The plan a ropeconv ONNX carries (None when it carries none) and all its metadata_props."""
    props = read_metadata(path)
    return plan_in(props, path), props
