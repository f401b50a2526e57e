"""sha256 of a file computed while it is written: one pass over the bytes, not a second read afterwards.

The hash runs on a worker thread (hashlib releases the GIL on buffers over 2 KiB), so on a machine with a
second core it overlaps the writing; the manifest then records the digest instead of reading the file back.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor

from ropeconv.checkpoint.sources import write_all

COPY_CHUNK_BYTES = 4 * 1024 * 1024  # a few MiB: the hash reads a chunk while it is still in the CPU's caches
COPY_BUFFERS = 4  # how far the hash may trail the copy


class BackgroundSha256:
    """sha256 on a worker thread; at most MAX_PENDING buffers queued, so memory stays bounded when hashing is
    slower than producing. A buffer given to update() must not change until hexdigest() returns."""

    MAX_PENDING = 4

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: list[Future] = []

    def update(self, data) -> Future:
        self._pending = [f for f in self._pending if not f.done()]
        while len(self._pending) >= self.MAX_PENDING:
            self._pending.pop(0).result()
        future = self._pool.submit(self._sha.update, data)
        self._pending.append(future)
        return future

    def hexdigest(self) -> str:
        for f in self._pending:
            f.result()
        self._pending.clear()
        return self._sha.hexdigest()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class HashedWriter:
    """Appends to an open file descriptor and hashes every byte appended, in order.

    write() returns once its bytes are both written and hashed, so the caller may reuse its buffer (with
    owned=True it returns once they are written: the caller promises never to change them, and the hash
    overlaps whatever it does next). copy() reads a range of another file through a few buffers of its own,
    so the hash of one chunk overlaps the read and write of the next.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._hasher = BackgroundSha256()
        self._buffers: list[tuple[memoryview, Future | None]] = []

    def write(self, data, owned: bool = False) -> None:
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        hashed = self._hasher.update(view)
        write_all(self.fd, view)
        if not owned:
            hashed.result()

    def copy(self, src_fd: int, offset: int, nbytes: int) -> None:
        """Append nbytes of src_fd from offset. EOFError when the source ends first."""
        if not self._buffers:
            self._buffers = [(memoryview(bytearray(COPY_CHUNK_BYTES)), None) for _ in range(COPY_BUFFERS)]
        turn = 0
        while nbytes:
            buf, hashing = self._buffers[turn]
            if hashing is not None:
                hashing.result()  # that buffer's previous chunk is hashed: it may be refilled
            n = os.preadv(src_fd, [buf[: min(nbytes, COPY_CHUNK_BYTES)]], offset)
            if n <= 0:
                raise EOFError(f"source ended {nbytes} bytes early")
            chunk = buf[:n]
            self._buffers[turn] = (buf, self._hasher.update(chunk))
            write_all(self.fd, chunk)
            offset += n
            nbytes -= n
            turn = (turn + 1) % COPY_BUFFERS

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def close(self) -> None:
        self._hasher.close()
        self._buffers = []
