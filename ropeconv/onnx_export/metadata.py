"""Read an ONNX model's metadata_props without reading its graph or weights.

A ModelProto is a sequence of top-level fields; every one but metadata_props (field 14) is skipped
by its length, so a 2 GB single-file model costs a few reads, where onnx.load would parse it all.
"""

from __future__ import annotations

from pathlib import Path

from ropeconv.errors import InputError
from ropeconv.positions import PositionPlan
from ropeconv.provenance import plan_in

_METADATA_PROPS = 14


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


def read_metadata(path: Path) -> dict[str, str]:
    from onnx import StringStringEntryProto

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
                        entry = StringStringEntryProto.FromString(f.read(length))
                        props[entry.key] = entry.value
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
    except Exception as exc:  # protobuf's DecodeError
        raise InputError(f"{path}: not a readable ONNX model ({exc})") from None
    return props


def read_plan(path: Path) -> tuple[PositionPlan | None, dict[str, str]]:
    """The plan a ropeconv ONNX carries (None when it carries none) and all its metadata_props."""
    props = read_metadata(path)
    return plan_in(props, path), props
