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
from ropeconv.provenance import plan_in

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


def _entry(raw: bytes) -> tuple[str, str]:
    """A StringStringEntryProto's key and value, as protobuf reads them: a field given twice keeps its last
    value, unknown fields are skipped, and a string that is not UTF-8 is an error."""
    import io

    f, size = io.BytesIO(raw), len(raw)
    fields = {_ENTRY_KEY: b"", _ENTRY_VALUE: b""}
    while f.tell() < size:
        key = _varint(f)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _varint(f)
        elif wire == 2:
            length = _varint(f)
            if f.tell() + length > size:
                raise ValueError("metadata entry runs past its end")
            data = f.read(length)
            if field in fields:
                fields[field] = data
        elif wire in (1, 5):
            if f.tell() + (8 if wire == 1 else 4) > size:
                raise ValueError("metadata entry runs past its end")
            f.seek(8 if wire == 1 else 4, 1)
        else:
            raise ValueError(f"wire type {wire} in a metadata entry")
    try:
        return fields[_ENTRY_KEY].decode("utf-8"), fields[_ENTRY_VALUE].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("a metadata string is not UTF-8") from None


def read_metadata(path: Path) -> dict[str, str]:
    path = Path(path)
    size = path.stat().st_size
    props: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            while f.tell() < size:
                key = _varint(f)
                field, wire = key >> 3, key & 7
                if wire == 0:
                    _varint(f)
                elif wire == 2:
                    length = _varint(f)
                    if f.tell() + length > size:
                        raise ValueError("field runs past the end of the file")
                    if field == _METADATA_PROPS:
                        name, value = _entry(f.read(length))
                        props[name] = value
                    else:
                        f.seek(length, 1)
                elif wire == 5:
                    f.seek(4, 1)
                elif wire == 1:
                    f.seek(8, 1)
                else:
                    raise ValueError(f"wire type {wire}")
    except (EOFError, ValueError) as exc:
        raise InputError(f"{path}: not a readable ONNX model ({exc or 'truncated'})") from None
    return props


def read_plan(path: Path) -> tuple[PositionPlan | None, dict[str, str]]:
    """The plan a ropeconv ONNX carries (None when it carries none) and all its metadata_props."""
    props = read_metadata(path)
    return plan_in(props, path), props
