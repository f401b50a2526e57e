"""Reading a file the user names, refusing anything that is not a regular file before it can block.

Opening a FIFO for reading waits for a writer forever, and a device can stream without end; so the
path is opened non-blocking and fstat'ed, and only a regular file is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ropeconv.errors import InputError


def kind_of(mode: int) -> str:
    """'a FIFO', 'a folder', … for a refusal line."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def refuse_special(path: Path, what: str) -> None:
    """Refuse `path` when it exists and is not a regular file (a target about to be written, say)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"{what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{what} {path}: is {kind_of(mode)}, not a regular file")
