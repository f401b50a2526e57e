"""sha256 of a file computed while it is written, so a manifest need not read the file again afterwards.

Bytes that pass through memory (converted tensors, headers) are hashed from the buffer that writes them.
Bytes copied from another file stay a kernel copy (copy_file_range: no trip through user space), and each
copied range is hashed by a worker thread right behind the copy, from the page cache it was just written
to, while the next range is copied. On a machine with a core to spare the hash then costs about nothing;
on a busy one it costs what `cp` followed by `openssl dgst -sha256` costs, never a separate pass after.
(Measured on 2 shared cores: copying through user-space buffers and hashing them on a thread was 2x slower
than this, from the handoffs and the second memcpy.)

Bytes computed here (a cast tensor) are made in a staging buffer that is a memfd's pages (stage()), and the
worker appends them by a kernel copy and hashes them from there (append_staged()); a few such slots take turns,
so the caller makes the next piece while the worker appends and hashes the last. While the worker appends,
bytes written after them go through it too; a copy() waits for it. On this VM, write() of 1 GB from process
memory took 0.19–2.6 s across identical runs, while the kernel copy from a memfd took 0.23–0.26 s every time.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from ropeconv.checkpoint.sources import copy_range, write_all

COPY_CHUNK_BYTES = 16 * 1024 * 1024  # one kernel copy, then its hash is queued
READ_CHUNK_BYTES = 2 * 1024 * 1024  # the worker reads back and hashes in pieces that stay in the CPU's caches
BATCH_BYTES = 8 * 1024 * 1024  # owned buffers are handed to the worker in batches: fewer thread handoffs
MAX_PENDING = 4  # how far the hash may trail the writing
STAGE_SLOTS = 3  # staging buffers taking turns: one filled while the ones before it are hashed


class HashedWriter:
    """Appends to a file descriptor and computes the sha256 of everything appended through it, in order.

    write(data): written, then hashed before returning (the caller may reuse its buffer); with owned=True the
    caller promises never to change the buffer and its hash is left to the worker. copy(src_fd, …): a kernel
    copy hashed behind by the worker, which reads the range back through this descriptor, so it must be
    open for reading too (O_RDWR). stage(n) / append_staged(n): bytes made in the writer's own staging buffer,
    appended and hashed by the worker. Nothing else may write to the descriptor meanwhile.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pos = os.lseek(fd, 0, os.SEEK_CUR)
        self._sha = hashlib.sha256()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()
        self._batch: list[memoryview] = []
        self._batch_bytes = 0
        self._read_buf: memoryview | None = None
        self._stage: tuple[int, mmap.mmap, int] | None = None  # memfd, its mapping, bytes a slot (stage())
        self._slot = 0  # the slot stage() hands out next
        self._slot_hashed: list[Future | None] = [None] * STAGE_SLOTS
        self._last_append: Future | None = None  # the worker's last append (staged pieces and what follows them)

    def write(self, data, owned: bool = False) -> None:
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        if owned and self._appending():  # the worker is appending staged pieces: these bytes go after, through it
            self._pos += view.nbytes
            self._last_append = self._submit(self._append_views, [view])
            return
        self._wait_appends()
        write_all(self.fd, view)
        self._pos += view.nbytes
        if owned:
            self._batch.append(view)
            self._batch_bytes += view.nbytes
            if self._batch_bytes >= BATCH_BYTES:
                self._flush_batch()
        else:
            self._drain()  # everything before these bytes is hashed first
            self._sha.update(view)

    def copy(self, src_fd: int, offset: int, nbytes: int) -> None:
        """Append nbytes of src_fd from offset. EOFError when the source ends first."""
        if self._read_buf is None:
            if fcntl.fcntl(self.fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDWR:
                raise ValueError("internal: HashedWriter.copy needs a descriptor open for reading and writing")
            self._read_buf = memoryview(bytearray(READ_CHUNK_BYTES))
        self._wait_appends()
        self._flush_batch()
        while nbytes:
            n = min(nbytes, COPY_CHUNK_BYTES)
            self._kernel_copy(src_fd, offset, n)
            self._submit(self._hash_range, self._pos, n)
            self._pos += n
            offset += n
            nbytes -= n

    def _kernel_copy(self, src_fd: int, offset: int, nbytes: int) -> None:
        """Append nbytes of src_fd from offset by kernel copies, unhashed; EOFError when the source ends first."""
        done = 0
        while done < nbytes:
            n = copy_range(src_fd, self.fd, nbytes - done, offset + done)
            if n <= 0:
                raise EOFError(f"source ended {nbytes - done} bytes early")
            done += n

    def stage(self, nbytes: int) -> memoryview:
        """A writable buffer for the next nbytes to append: fill it, then append_staged(nbytes). It is valid
        until the next stage()."""
        if self._stage is None or self._stage[2] < nbytes:
            self._drain()  # every slot hashed: the mapping can go
            self._close_stage()
            size = max(nbytes, 1)
            if not hasattr(os, "memfd_create"):  # not Linux: process memory, appended by write()
                self._stage = (-1, mmap.mmap(-1, size * STAGE_SLOTS), size)
            else:
                fd = os.memfd_create("ropeconv-stage", os.MFD_CLOEXEC)
                os.ftruncate(fd, size * STAGE_SLOTS)
                self._stage = (fd, mmap.mmap(fd, size * STAGE_SLOTS), size)
        hashed = self._slot_hashed[self._slot]
        if hashed is not None:
            hashed.result()  # the worker is done reading this slot
            self._slot_hashed[self._slot] = None
        start = self._slot * self._stage[2]
        return memoryview(self._stage[1])[start : start + nbytes]

    def append_staged(self, nbytes: int) -> None:
        """Append the first nbytes of the buffer the last stage() gave."""
        assert self._stage is not None  # stage() came first
        fd, mapping, size = self._stage
        start = self._slot * size
        view = memoryview(mapping)[start : start + nbytes]
        if fd < 0:
            self.write(view)
            return
        self._flush_batch()
        self._pos += nbytes
        self._last_append = self._slot_hashed[self._slot] = self._submit(self._append_slot, fd, start, nbytes, view)
        self._slot = (self._slot + 1) % STAGE_SLOTS

    def _appending(self) -> bool:
        return self._last_append is not None and not self._last_append.done()

    def _wait_appends(self) -> None:
        """Before this thread appends: the worker's appends (which come first in the file) are done."""
        if self._last_append is not None:
            self._last_append.result()
            self._last_append = None

    def hexdigest(self) -> str:
        self._drain()
        return self._sha.hexdigest()

    def close(self) -> None:
        self._batch, self._batch_bytes, self._last_append = [], 0, None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
        self._close_stage()  # after the worker: it may be reading a slot

    def _close_stage(self) -> None:
        self._slot, self._slot_hashed = 0, [None] * STAGE_SLOTS
        if self._stage is not None:
            fd, mapping, _ = self._stage
            self._stage = None
            try:
                mapping.close()
            except BufferError:  # a caller still holds a view: the mapping goes with it
                pass
            if fd >= 0:
                os.close(fd)

    # --- the worker's side ---

    def _hash_range(self, pos: int, nbytes: int) -> None:
        buf = self._read_buf
        assert buf is not None  # copy() made it before handing the range over
        while nbytes:
            n = os.preadv(self.fd, [buf[: min(nbytes, READ_CHUNK_BYTES)]], pos)
            if n <= 0:
                raise OSError(f"internal: the written range at {pos} reads back short")
            self._sha.update(buf[:n])
            pos += n
            nbytes -= n

    def _append_slot(self, fd: int, start: int, nbytes: int, view: memoryview) -> None:
        self._kernel_copy(fd, start, nbytes)
        self._sha.update(view)

    def _append_views(self, views: list[memoryview]) -> None:
        for view in views:
            write_all(self.fd, view)
            self._sha.update(view)

    def _hash_views(self, views: list[memoryview]) -> None:
        for view in views:
            self._sha.update(view)

    def _flush_batch(self) -> None:
        if self._batch:
            views, self._batch, self._batch_bytes = self._batch, [], 0
            self._submit(self._hash_views, views)

    def _submit(self, fn, *args) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ropeconv-sha256")
        while len(self._pending) >= MAX_PENDING:
            self._pending.popleft().result()
        future = self._pool.submit(fn, *args)
        self._pending.append(future)
        return future

    def _drain(self) -> None:
        self._flush_batch()
        while self._pending:
            self._pending.popleft().result()
