"""manifest.json: what was made, from what, by which versions, and the sha256 of every file.

No timestamps or host names: two runs with the same inputs give byte-identical manifests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import ropeconv
from ropeconv import jsontext
from ropeconv.errors import InputError

MANIFEST_NAME = "manifest.json"
LIBRARIES = ("torch", "transformers", "safetensors", "numpy", "gguf", "onnx", "onnxruntime", "llama_cpp_python")


def library_versions() -> dict[str, str]:
    from importlib import metadata  # 12 ms: only where a manifest is written

    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return out


def sha256_file(path: Path, chunk_bytes: int = 8 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def file_records(root: Path, known_sha256: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """known_sha256: digests computed while the files were written (relative path → hex), not read back."""
    known = known_sha256 or {}
    records = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        rel = path.relative_to(root).as_posix()
        records[rel] = {"sha256": known.get(rel) or sha256_file(path), "bytes": path.stat().st_size}
    return records


def write_manifest(root: Path, body: dict[str, Any], known_sha256: dict[str, str] | None = None) -> dict[str, Any]:
    manifest = {
        "ropeconv_version": ropeconv.__version__,
        "libraries": library_versions(),
        **body,
        "files": file_records(root, known_sha256),
    }
    (root / MANIFEST_NAME).write_text(jsontext.dumps(manifest, MANIFEST_NAME, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = jsontext.loads(path.read_bytes(), str(path))
    except (OSError, InputError):
        return None
    return data if isinstance(data, dict) else None
