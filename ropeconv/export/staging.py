"""Atomic publication of an output directory or file.

Everything is written into a hidden temporary sibling; only a complete result is renamed into
place. Any exception — including KeyboardInterrupt and the SIGTERM the CLI turns into one — removes
the temporary and leaves a previous output untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ropeconv.errors import InputError


def check_target(out: Path, force: bool) -> None:
    """Missing parents are fine (they are created when writing starts); an existing file where a folder must be is
    not."""
    if out.exists() and not force:
        raise InputError(f"{out} already exists; pass --force to replace it")
    ancestor = Path(out).absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"-o {out}: {ancestor} is a file, not a folder")


@contextlib.contextmanager
def _parents(out: Path) -> Iterator[None]:
    """Create the output's missing parent folders; remove them again (only those) if the work fails."""
    created = []
    parent = Path(out).absolute().parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    try:
        Path(out).absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"-o {out}: cannot create its folder ({exc.strerror or exc})") from None
    try:
        yield
    except BaseException:
        for folder in created:  # deepest first; one that is not empty (someone else's files) stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise


@contextlib.contextmanager
def staged_dir(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary directory; on clean exit it replaces `out`."""
    out = Path(out)
    check_target(out, force)
    with _parents(out):
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a published model should be readable like any dir
        try:
            yield tmp
            _replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    # A directory cannot be renamed over a non-empty one: move the old aside first, then drop it.
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rmdir(old)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_file(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary sibling path; on clean exit it atomically replaces `out`."""
    out = Path(out)
    check_target(out, force)
    if out.is_dir():
        raise InputError(f"{out} is a directory; -o must name a file here")
    with _parents(out):
        # keep the suffix: runtimes pick themselves by it (a staged .gguf is run by llama.cpp)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".tmp{out.suffix}", dir=out.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            yield tmp
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
