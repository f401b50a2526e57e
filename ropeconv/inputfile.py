"""Opening a user's input file: regular files only.

A FIFO in place of model.safetensors blocks the first open() forever (no writer ever comes), a
character device never ends, a directory fails deep inside a library: each is refused here in one
line before any reader touches it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ropeconv.errors import InputError
from ropeconv.jsontext import is_utf8, printable

MAX_PATH_CHARS = 4096  # Linux's PATH_MAX: the longest path a system call takes

_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def not_regular(mode: int) -> str | None:
    """What a non-regular file is ("a FIFO (named pipe)"), or None for a regular file."""
    return None if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def refusal(path: Path, kind: str) -> InputError:
    return InputError(f"{path}: cannot read {kind}; ropeconv reads weights and configs from regular files only")


def check_path(path: Path, what: str) -> Path:
    """A path a user names, refused in one line where no system call could take it: a NUL byte (Python raises
    ValueError), a symbolic link loop or a name too long. A path that does not exist (yet) passes."""
    text = os.fspath(path)
    named = f"{what} " if what else ""
    if "\0" in text:
        raise InputError(f"{named}{printable(text)[:200]!r}: a file name cannot hold a NUL byte")
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG):
            raise InputError(f"{named}{printable(text)[:200]}: {exc.strerror}") from None
    return Path(path)


def check_regular(path: Path) -> None:
    """For paths handed to a library that opens them itself (torch.load): refuse a non-regular file first."""
    check_path(path, "")
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    kind = not_regular(mode)
    if kind:
        raise refusal(path, kind)


def open_regular(path: Path) -> BinaryIO:
    """Open for binary reading; refuse anything but a regular file without blocking on it."""
    check_path(path, "")
    try:
        # O_NONBLOCK: opening a FIFO that has no writer returns at once instead of waiting for one
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        kind = not_regular(os.fstat(fd).st_mode)
        if kind:
            raise refusal(path, kind)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: Path, limit: int | None = None, what: str = "file") -> bytes:
    """A regular file's bytes; InputError when it is larger than `limit`."""
    with open_regular(path) as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if limit is not None and size > limit:
                raise InputError(f"{path}: {size} bytes is too large for a {what} (at most {limit})")
            data = fh.read() if limit is None else fh.read(limit + 1)  # a file growing meanwhile stays bounded
            if limit is not None and len(data) > limit:
                raise InputError(f"{path}: more than {limit} bytes is too large for a {what} (it grew while read)")
            return data
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


@contextlib.contextmanager
def utf8_path(path: Path) -> Iterator[Path]:
    """`path`, or while the block runs an alias of it whose text is UTF-8, for libraries that take a path as
    UTF-8 text (safetensors' Rust loader, llama.cpp, onnx, onnxruntime): a folder named with bytes that are not
    UTF-8 (os.fsdecode's surrogate escapes) is reached through a symlink in a temporary folder."""
    path = Path(path)
    if is_utf8(str(path)):
        yield path
        return
    parts = path.absolute().parts
    # the last component that is not UTF-8 and everything above it become the link; the rest is kept
    cut = max(i for i, part in enumerate(parts) if not is_utf8(part)) + 1
    with tempfile.TemporaryDirectory(prefix="ropeconv-utf8-") as tmp:
        target = Path(*parts[:cut])
        link = Path(tmp) / printable(target.name)  # the name as shown, \xNN for each byte that is not UTF-8
        link.symlink_to(target, target_is_directory=target.is_dir())
        yield link.joinpath(*parts[cut:])

