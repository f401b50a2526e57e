"""manifest.json: what was made, from what, by which versions, and the sha256 of every file.

No timestamps or host names: two runs with the same inputs give byte-identical manifests.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, overload

import ropeconv
from ropeconv import jsontext
from ropeconv.errors import InputError, ParityError
from ropeconv.formats import FORMATS
from ropeconv.inputfile import MAX_PATH_CHARS, open_regular, read_bytes

MANIFEST_NAME = "manifest.json"
# A manifest lists an output's files and its plan (two factor lists at most): kilobytes, a few hundred for
# thousands of shards. Larger is not one ropeconv wrote; it is refused before it is read.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILE_BYTES = 2**62  # a size a file can have
MAX_VOCAB_SIZE = 2**31 - 1  # token ids are int32 in every runtime ropeconv proves in
_SHA256 = re.compile(r"[0-9a-f]{64}")
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
    """Read in chunks: memory stays one chunk whatever the file's size. A non-regular file is an InputError."""
    h = hashlib.sha256()
    with open_regular(path) as fh:
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


class ChangedFiles(ParityError):
    """An output's files are not the ones its manifest records (missing, resized, other bytes): what was proven
    is not what is there, so verification fails (exit 1). The parity reports that ran, if any, come with it."""

    def __init__(self, message: str, reports: list | None = None):
        super().__init__(message)
        self.reports = reports or []


@dataclass(frozen=True)
class FileRecord:
    sha256: str  # lowercase hex
    size_bytes: int


@dataclass(frozen=True)
class AdapterRecord:
    """A LoRA adapter merged into the output: where it was and the sha256 of its files."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """manifest.json as the one strict reader (load_manifest) returns it: every field below typed and
    range-checked, every path that names a file of the output a plain relative path inside `root`."""

    root: Path
    data: Mapping[str, Any]  # the whole document; its other fields are validated for type where read elsewhere
    files: Mapping[str, FileRecord]  # relative POSIX path → record
    formats: Mapping[str, Mapping[str, Any]]  # format name → its record ("file": a path listed in `files`)
    plan: Mapping[str, Any] | None  # the recorded plan (positions.plan_from_json reads it, a layer above)
    base_path: str | None
    vocab_size: int | None
    lora: tuple[AdapterRecord, ...]

    @property
    def where(self) -> str:
        return str(self.root / MANIFEST_NAME)


def load_manifest(root: Path) -> Manifest:
    """root's manifest.json; one InputError line when it is missing, not a regular file, larger than
    MAX_MANIFEST_BYTES (refused before reading), not JSON, or a field has the wrong type, is out of range or
    names a path outside root."""
    path = Path(root) / MANIFEST_NAME
    if not os.path.lexists(path):
        raise InputError(f"{root}: no manifest.json (not a ropeconv output?)")
    return parse_manifest(Path(root), _document(path))


def find_manifest(root: Path) -> Manifest | None:
    """The manifest of the ropeconv output `root`, strictly read, when root holds one that says it is ropeconv's
    (an object with ropeconv_version); None when there is none, or a manifest.json of something else."""
    path = Path(root) / MANIFEST_NAME
    try:
        data = _document(path) if os.path.lexists(path) else None
    except InputError:
        return None
    if not isinstance(data, dict) or "ropeconv_version" not in data:
        return None
    return parse_manifest(Path(root), data)


def _document(path: Path) -> Any:
    if os.path.islink(path):
        raise InputError(f"{path}: a symbolic link; ropeconv writes its manifest as a regular file")
    return jsontext.loads(read_bytes(path, MAX_MANIFEST_BYTES, "manifest.json"), str(path))


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The document of root's manifest.json when the strict reader accepts it, else None (no manifest, or a
    damaged one): for views that show what they can (inspect, a recipe's up-to-date check)."""
    try:
        return dict(load_manifest(root).data)
    except InputError:
        return None


def parse_manifest(root: Path, data: Any) -> Manifest:
    """The typed view of a manifest document of the output `root` (load_manifest's reader)."""
    r = _Fields(str(Path(root) / MANIFEST_NAME))
    doc = r.object(data, "(top)")
    r.text(doc.get("ropeconv_version"), "ropeconv_version")
    files = {r.inside(root, rel, "files"): r.file_record(rec, rel)
             for rel, rec in r.object(doc.get("files"), "files").items()}
    formats = {}
    for name, record in (r.object(doc["formats"], "formats") if "formats" in doc else {}).items():
        if name not in FORMATS:
            raise r.fail(f"formats.{name[:40]}", f"not a format ropeconv writes ({', '.join(FORMATS)})")
        record = r.object(record, f"formats.{name}")
        if "file" in record or not FORMATS[name].is_checkpoint:
            rel = r.inside(root, record.get("file"), f"formats.{name}.file")
            if rel not in files:
                raise r.fail(f"formats.{name}.file", f"{rel!r} is not among the files the manifest lists")
        formats[name] = record
    # absent in an adapter's manifest (finetune); present, an object (readers take .get on it)
    base = r.object(doc["base"], "base") if "base" in doc else {}
    base_path = r.text(base.get("path"), "base.path") if "base" in doc else None
    for key in ("config_sha256", "architecture"):
        r.text(base.get(key), f"base.{key}", optional=True)
    hub = r.object(base.get("hub"), "base.hub", optional=True)  # a base given as a Hub id
    for key in ("repo_id", "revision", "commit", "file"):
        r.text(hub.get(key), f"base.hub.{key}", optional=key == "file" or not hub)
    vocab = doc.get("vocab_size")
    lora = adapter_records(doc.get("lora"), r.where)
    recipe = r.object(doc.get("recipe"), "recipe", optional=True)
    for key in ("file", "sha256"):
        r.text(recipe.get(key), f"recipe.{key}", optional=True)
    for name, report in r.object(doc.get("parity"), "parity", optional=True).items():
        r.object(report, f"parity.{name[:40]}", optional=True)
    r.text(doc.get("method"), "method", optional=True)
    r.text(doc.get("kind"), "kind", optional=True)
    r.object(doc.get("libraries"), "libraries", optional=True)
    return Manifest(root=Path(root), data=doc, files=files, formats=formats,
                    plan=r.object(doc.get("plan"), "plan") if doc.get("plan") is not None else None,
                    base_path=base_path, lora=lora,
                    vocab_size=None if vocab is None else r.count(vocab, "vocab_size", 1, MAX_VOCAB_SIZE))


def adapter_records(value: Any, where: str) -> tuple[AdapterRecord, ...]:
    """A list of merged adapters as a manifest (or a GGUF's ropeconv.lora key) records them; null: none."""
    r = _Fields(where)
    return tuple(r.adapter(item, f"lora[{i}]") for i, item in enumerate(r.array(value, "lora")))


@dataclass(frozen=True)
class _Fields:
    """Typed reads of one document's fields, each failure one InputError line naming the file and the key."""

    where: str

    def fail(self, key: str, what: str) -> InputError:
        return InputError(f"{self.where}: {key}: {what}")

    def object(self, value: Any, key: str, optional: bool = False) -> Mapping[str, Any]:
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected an object, not {_kind(value)}")
        return value

    def array(self, value: Any, key: str) -> list:
        """A list, or null (none)."""
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list, not {_kind(value)}")
        return value

    @overload
    def text(self, value: Any, key: str, optional: Literal[False] = False) -> str: ...

    @overload
    def text(self, value: Any, key: str, optional: bool) -> str | None: ...

    def text(self, value: Any, key: str, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, not {_kind(value)}")
        if "\0" in value or len(value) > MAX_PATH_CHARS:
            raise self.fail(key, f"a NUL byte or more than {MAX_PATH_CHARS} characters")
        return value

    def count(self, value: Any, key: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            shown = jsontext.printable(repr(value))[:40]
            raise self.fail(key, f"{shown} is not a whole number from {low} to {high}")
        return value

    def file_record(self, value: Any, rel: str) -> FileRecord:
        key = f"files[{rel[:80]!r}]"
        record = self.object(value, key)
        digest = self.text(record.get("sha256"), f"{key}.sha256")
        if not _SHA256.fullmatch(digest):
            raise self.fail(f"{key}.sha256", "not a sha256 (64 lowercase hex digits)")
        return FileRecord(digest, self.count(record.get("bytes"), f"{key}.bytes", 0, MAX_FILE_BYTES))

    def adapter(self, value: Any, key: str) -> AdapterRecord:
        record = self.object(value, key)
        return AdapterRecord(self.text(record.get("path"), f"{key}.path"),
                             self.text(record.get("sha256"), f"{key}.sha256"))

    def inside(self, root: Path, value: Any, key: str) -> str:
        """A path of the output: plain, relative, no '.' or '..' parts, and inside root once links are followed."""
        rel = self.text(value, key)
        pure = PurePosixPath(rel)
        if not rel or pure.is_absolute() or pure.as_posix() != rel or any(p in (".", "..") for p in pure.parts):
            raise self.fail(key, f"{jsontext.printable(rel)[:80]!r} is not a plain relative path inside the output")
        real_root = os.path.realpath(root)
        if os.path.commonpath([real_root, os.path.realpath(Path(root) / rel)]) != real_root:
            raise self.fail(key, f"{jsontext.printable(rel)[:80]!r} leads outside the output (a symbolic link)")
        return rel


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def changed_files(manifest: Manifest, selected: Callable[[str], bool] = lambda rel: True) -> list[str]:
    """The listed files (those `selected`) that are missing or not as recorded, each "REL (how)": sizes are
    compared first, then the rest hashed in a stream (sha256_file), never read whole into memory."""
    changed, same_size = [], []
    for rel, record in manifest.files.items():
        if not selected(rel):
            continue
        path = manifest.root / rel
        try:
            st = os.stat(path)
        except OSError as exc:
            changed.append(f"{rel} ({'missing' if isinstance(exc, FileNotFoundError) else exc.strerror or exc})")
            continue
        if not stat.S_ISREG(st.st_mode):
            changed.append(f"{rel} (not a regular file)")
        elif st.st_size != record.size_bytes:
            changed.append(f"{rel} ({st.st_size} bytes, recorded {record.size_bytes})")
        else:
            same_size.append(rel)
    for rel in same_size:
        if sha256_file(manifest.root / rel) != manifest.files[rel].sha256:
            changed.append(f"{rel} (sha256 differs)")
    return changed


def describe_changes(root: Path, changed: list[str], shown: int = 3) -> str:
    more = f" and {len(changed) - shown} more" if len(changed) > shown else ""
    return (f"{root}: {len(changed)} file(s) differ from what manifest.json records: {', '.join(changed[:shown])}"
            f"{more}")
