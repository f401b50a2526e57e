"""HashedWriter: the sha256 of everything appended, computed while it is written — by write(), by kernel copies
from another file, and from the staging slots that cast tensors are made in (stage / append_staged) — against an
independent hashlib pass over the file as it lies on disk."""

from __future__ import annotations

import hashlib
import os
import random
import time

import pytest

from ropeconv import hashing
from ropeconv.hashing import HashedWriter


def _appends(tmp_path, pieces: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """Writes the pieces in order through one HashedWriter; returns the file's bytes and the writer's digest."""
    source = tmp_path / "source.bin"
    source.write_bytes(b"".join(data for kind, data in pieces if kind == "copy"))
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    src = os.open(source, os.O_RDONLY)
    writer = HashedWriter(fd)
    try:
        at = 0
        for kind, data in pieces:
            if kind == "copy":
                writer.copy(src, at, len(data))
                at += len(data)
            elif kind == "owned":
                writer.write(bytes(data), owned=True)
            else:
                writer.stage(len(data))[:] = data
                writer.append_staged(len(data))
        digest = writer.hexdigest()
    finally:
        writer.close()
        os.close(fd)
        os.close(src)
    return out.read_bytes(), digest


def _pieces(seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    kinds = ["stage"] * 8 + ["owned", "copy"]
    # sizes grow and shrink: the staging buffer is remapped larger midway, and slots are reused many times
    sizes = [rng.choice((1, 7, 4096, 70_000, 300_000)) for _ in range(40)] + [1 << 20, 5, 2 << 20]
    return [(rng.choice(kinds), rng.randbytes(n)) for n in sizes]


@pytest.fixture
def slow_hash(monkeypatch):
    """The worker hashes each staged piece late: a slot handed out again before its hash was taken would change
    bytes still to be hashed, and the digest would no longer be the file's."""
    hash_views = HashedWriter._hash_views

    def late(self, views):
        time.sleep(0.002)
        hash_views(self, views)

    monkeypatch.setattr(HashedWriter, "_hash_views", late)


@pytest.mark.parametrize("seed", [0, 1])
def test_staged_copied_and_written_bytes_hash_as_the_file(tmp_path, slow_hash, seed):
    pieces = _pieces(seed)
    data, digest = _appends(tmp_path, pieces)
    assert data == b"".join(d for _, d in pieces)
    assert digest == hashlib.sha256(data).hexdigest()


def test_without_memfd_staged_bytes_are_written_and_hashed_alike(tmp_path, slow_hash, monkeypatch):
    monkeypatch.delattr(hashing.os, "memfd_create")
    pieces = _pieces(2)
    data, digest = _appends(tmp_path, pieces)
    assert data == b"".join(d for _, d in pieces)
    assert digest == hashlib.sha256(data).hexdigest()
