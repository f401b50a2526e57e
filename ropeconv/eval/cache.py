"""Results cache: one JSON line per finished trial (passkey) or length (perplexity), appended as it finishes.

The file is named by a hash of (model hash, settings), so a rerun with the same model and settings finds
what was done and skips it; an interrupted sweep resumes where it stopped; a torn last line is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ropeconv" / "eval"


class ResultCache:
    def __init__(self, directory: Path | None, kind: str, key: dict):
        self.key = key
        self.digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.path = None if directory is None else Path(directory) / f"{kind}-{self.digest}.jsonl"
        self._done: dict[str, dict] | None = None

    def done(self) -> dict[str, dict]:
        """id → record, for every complete line (the key recorded in the first line must match)."""
        if self._done is None:
            self._done = {}
            if self.path is not None and self.path.is_file():
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # interrupted mid-write
                        continue
                    if isinstance(entry, dict) and "id" in entry and "record" in entry:
                        self._done[str(entry["id"])] = entry["record"]
        return self._done

    def get(self, record_id: str) -> dict | None:
        return self.done().get(record_id)

    def add(self, record_id: str, record: dict) -> None:
        self.done()[record_id] = record
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, "a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps({"cache": self.key}, sort_keys=True, default=str) + "\n")
            elif not _ends_with_newline(self.path):
                f.write("\n")  # after a torn line
            f.write(json.dumps({"id": record_id, "record": record}, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
