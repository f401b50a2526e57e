"""Results cache: one JSON line per finished trial (passkey) or length (perplexity), appended as it finishes.

The file is named by a hash of (model hash, settings), so a rerun with the same model and settings finds
what was done and skips it; an interrupted sweep resumes where it stopped.

Reading is strict and bounded: a regular file only (a FIFO would block), at most MAX_FILE_BYTES, lines of at
most MAX_LINE_BYTES read one at a time, at most MAX_ENTRIES records; every line UTF-8 JSON with finite numbers
(ropeconv.jsontext), the first the settings this file is named by, each next one {"id": str, "record": object}
that the cache's `check` (the caller's schema) accepts. Anything else is one InputError naming the file and the
line. A last line without its newline is an interrupted write: it is ignored, and cut off before the next append.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeGuard

from ropeconv import jsontext
from ropeconv.errors import InputError
from ropeconv.inputfile import open_regular

MAX_FILE_BYTES = 256 << 20
MAX_LINE_BYTES = 1 << 20  # a search record is ~1.5 KB at 64 rotary pairs
MAX_ENTRIES = 200_000


def whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def number(value: Any) -> TypeGuard[int | float]:  # finite already: the cache reads through ropeconv.jsontext
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fields_problem(record: dict, fields: Mapping[str, Callable[[Any], bool]]) -> str | None:
    """The first of `fields` (name → what its value must satisfy) a cached record breaks, as one clause; the
    `check` of a cache whose records are plain typed fields (passkey trials, perplexities)."""
    for name, ok in fields.items():
        if not ok(record.get(name)):
            return f"{name} {str(record.get(name))[:40]!r} is not what this record holds"
    return None


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ropeconv" / "eval"


class ResultCache:
    def __init__(self, directory: Path | None, kind: str, key: dict,
                 check: Callable[[dict], str | None] = lambda record: None):
        """check(record): why a cached record cannot be used (one clause), or None."""
        self.key = key
        self.digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.path = None if directory is None else Path(directory) / f"{kind}-{self.digest}.jsonl"
        self.check = check
        self._done: dict[str, dict] | None = None
        self._complete_bytes = 0  # the bytes up to the last complete line: an append starts there
        self._read_bytes = 0  # the file's size when read

    def done(self) -> dict[str, dict]:
        """id → record, for every complete line (the key recorded in the first line must match)."""
        if self._done is None:
            self._done = {}
            if self.path is not None and _exists(self.path):
                self._read(self.path)
        return self._done

    def _read(self, path: Path) -> None:
        header = json.loads(json.dumps({"cache": self.key}, sort_keys=True, default=str))
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise self._damaged(0, f"{size} bytes, more than the {MAX_FILE_BYTES} a cache file may hold")
            self._read_bytes = size
            number = 0
            while line := fh.readline(MAX_LINE_BYTES + 1):
                number += 1
                if self._complete_bytes + len(line) > MAX_FILE_BYTES:  # grown while read
                    raise self._damaged(number, f"beyond the {MAX_FILE_BYTES} bytes a cache file may hold")
                if not line.endswith(b"\n"):
                    if len(line) > MAX_LINE_BYTES:
                        raise self._damaged(number, f"longer than {MAX_LINE_BYTES} bytes")
                    return  # interrupted mid-write
                try:
                    entry = jsontext.loads(line.decode("utf-8"), "")
                except UnicodeDecodeError:
                    raise self._damaged(number, "not UTF-8 text") from None
                except InputError as exc:
                    raise self._damaged(number, str(exc).removeprefix(": ")) from None
                if number == 1:
                    if entry != header:
                        raise self._damaged(number, "not the settings this cache file is named by")
                else:
                    self._add_line(number, entry)
                self._complete_bytes += len(line)

    def _add_line(self, number: int, entry) -> None:
        if not (isinstance(entry, dict) and entry.keys() == {"id", "record"} and isinstance(entry["id"], str)
                and isinstance(entry["record"], dict)):
            raise self._damaged(number, 'not a record {"id": "…", "record": {…}}')
        why = self.check(entry["record"])
        if why:
            raise self._damaged(number, why)
        done = self._done
        assert done is not None  # done() made it before reading the file
        if entry["id"] not in done and len(done) >= MAX_ENTRIES:
            raise self._damaged(number, f"more than {MAX_ENTRIES} records")
        done[entry["id"]] = entry["record"]

    def _damaged(self, number: int, why: str) -> InputError:
        where = f"{self.path}:{number}" if number else str(self.path)
        return InputError(f"cache {where}: {why}; remove the file (or give another cache folder) to recompute")

    def get(self, record_id: str) -> dict | None:
        return self.done().get(record_id)

    def add(self, record_id: str, record: dict) -> None:
        self.done()[record_id] = record
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            end = f.seek(0, os.SEEK_END)
            if end == self._read_bytes > self._complete_bytes:  # the torn line read above, still the last
                f.truncate(self._complete_bytes)
                end = self._complete_bytes
            if end == 0:
                f.write(json.dumps({"cache": self.key}, sort_keys=True, default=str) + "\n")
            elif not _ends_with_newline(self.path):
                f.write("\n")  # after a torn line another run left since
            f.write(json.dumps({"id": record_id, "record": record}, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
            self._complete_bytes = self._read_bytes = f.seek(0, os.SEEK_END)


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # a symlink loop, a denied folder: open_regular says which
    return True


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
