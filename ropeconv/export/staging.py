"""Publishing an output: who may replace what, one run per target, and atomic publication.

- `replace_refusal` is the one rule for what an output may replace. Nothing is replaced that
  ropeconv cannot prove it wrote: `--force` replaces a previous ropeconv output (a folder whose
  manifest.json lists every file in it, or a GGUF carrying ropeconv's provenance keys) or an empty
  folder, never a user's file, a home or current folder, a link or a special file.
- `target_lock` holds an exclusive flock on `.NAME.lock` beside the target for the whole run, so two
  runs to one target cannot both publish; the second is refused at once. Holding the lock proves no
  other run is writing, so staging left by a killed run (`kill -9`) is removed then.
- `staged_dir` / `staged_file` / `staged_files` write into a hidden temporary sibling; only a complete result
  is renamed into place (`staged_files`: a set of files published together, the last one last, a failed
  rename undoing the ones before it). Any exception — including KeyboardInterrupt and the SIGTERM the CLI
  turns into one — removes the temporary and leaves a previous output untouched; an OS error (disk full,
  read-only, permission) becomes one InputError line naming the path and the OS reason.
- `overlap_refusal`: an output is never one of the command's inputs (the --text) nor inside one (the base).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ropeconv.errors import InputError
from ropeconv.files import kind_of
from ropeconv.interrupts import raise_if_interrupted
from ropeconv.provenance import PLAN_KEY, VERSION_KEY

MANIFEST = "manifest.json"  # ropeconv.manifest.MANIFEST_NAME (that module sits above this one)
GGUF_PROVENANCE = (PLAN_KEY, VERSION_KEY)  # every GGUF ropeconv writes carries them
SHOWN = 3  # names quoted in a refusal before "and N more"

_held: dict[str, int] = {}  # targets this process holds the lock of (recipe run → extend take it twice)


@dataclass(frozen=True)
class Proof:
    """How an existing file is proven to be ropeconv's own output of one kind: only such a file may be replaced."""

    what: str  # "a GGUF ropeconv wrote": the kind of file --force may replace
    missing: str  # what a file that is not one lacks, for the refusal ("no ropeconv.plan metadata")
    holds: Callable[[Path], bool]  # the check (never raises: an unreadable file is not proven)


# ----------------------------------------------------------------------------- what may be replaced


def replace_refusal(out: Path, *, kind: str = "dir", force: bool = False, owner: str | None = None,
                    proof: Proof | None = None) -> str | None:
    """None when an output of `kind` ("dir" or "file") may be published at `out`; else why not (one line).

    owner: the recipe file (resolved path) this run comes from; its own previous output is replaced
    without --force. proof: for a file, what proves an existing one is ropeconv's (default: a GGUF it wrote)."""
    out = Path(out)
    path = absolute(out)
    protected = _protected(path)
    if protected:
        real = os.path.realpath(path)
        named = str(out) if str(out) == real else f"{out} ({real})"
        return f"{named} is {protected}; ropeconv will not replace it, even with --force — write the output elsewhere"
    if not os.path.lexists(path):
        return _parent_refusal(out, path)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return f"{out} is a symbolic link; ropeconv replaces only its own outputs, not links, even with --force — " \
               "remove it or choose another output path"
    if kind == "file":
        return _file_refusal(out, path, st, force, proof or GGUF_PROOF)
    if not stat.S_ISDIR(st.st_mode):
        return f"{out} is {kind_of(st.st_mode)}, not a folder; ropeconv writes a folder here and will not " \
               "replace it, even with --force — remove it or choose another output path"
    with os.scandir(path) as it:
        first = sorted(e.name for e in it)
    if not first:
        return None if force else f"{out} already exists (an empty folder); pass --force to replace it"
    manifest = _manifest(path)
    if manifest is None:
        return f"{out} is not a ropeconv output (no manifest.json listing its files; it holds {_names(first)}); " \
               "--force replaces only a previous ropeconv output or an empty folder — move them or choose another " \
               "output path"
    strangers, blocked = _unlisted(path, set(manifest["files"]))
    if blocked:
        return f"{out} holds a folder ropeconv cannot read or empty ({_names(blocked)}); replacing it would " \
               "leave your files behind, so ropeconv will not, even with --force — fix its permissions, move it " \
               "out or choose another output path"
    if strangers:
        return f"{out} holds files its manifest.json does not list ({_names(strangers)}); ropeconv will not delete " \
               "them, even with --force — move them out or choose another output path"
    recipe = manifest.get("recipe") if isinstance(manifest.get("recipe"), dict) else None
    if owner is not None and recipe and recipe.get("file") == owner:
        return None
    if force:
        return None
    made_by = f"made by the recipe {recipe.get('file')}" if recipe and owner is not None \
        else "a previous ropeconv output"
    return f"{out} already exists ({made_by}); pass --force to replace it"


def check_target(out: Path, force: bool, *, kind: str = "dir", owner: str | None = None,
                 proof: Proof | None = None) -> None:
    reason = replace_refusal(out, kind=kind, force=force, owner=owner, proof=proof)
    if reason:
        raise InputError(reason)


def check_files(outs: Sequence[tuple[Path, Proof]], force: bool) -> None:
    """check_target for each of a set of files published together (see staged_files)."""
    for out, proof in outs:
        check_target(out, force, kind="file", proof=proof)


def overlap_refusal(out: Path, inputs: Sequence[tuple[str, Path]]) -> str | None:
    """Why `out` may not be written when it is one of the inputs (`--text FILE`) or lies inside one (the base
    folder, symlinks followed); None when it is neither. inputs: (how the command names it, path)."""
    real = Path(os.path.realpath(out))
    for label, given in inputs:
        source = Path(os.path.realpath(given))
        if real == source:
            return f"{out} is the {label} {given}; ropeconv will not write over its input — choose another " \
                   "output path"
        if source in real.parents:
            return f"{out} lies inside the {label} {given}; ropeconv will not write into its input — choose " \
                   "another output path"
    return None


def absolute(path: Path) -> Path:
    """Lexically absolute (`.`, `..` and `x/` resolved, symlinks kept): the name the rename acts on."""
    return Path(os.path.abspath(path))


def _protected(path: Path) -> str | None:
    """Folders never replaced, whatever they hold: /, the user's home, the current folder and its parents."""
    real = Path(os.path.realpath(path))
    if real == Path(real.anchor):
        return "the filesystem root"
    with contextlib.suppress(RuntimeError, KeyError):
        if real == Path(os.path.realpath(Path.home())):
            return "your home folder"
    cwd = Path(os.path.realpath(os.getcwd()))
    if real == cwd:
        return "the current folder"
    if real in cwd.parents:
        return "a folder holding the current folder"
    return None


def _parent_refusal(out: Path, path: Path) -> str | None:
    """Missing parents are fine (created when writing starts, see _parents); a file on the way is not."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"-o {out}: its parent {ancestor} is not a folder ({os.strerror(errno.ENOTDIR)}, ENOTDIR)"
    return None


@contextlib.contextmanager
def _parents(out: Path) -> Iterator[None]:
    """Create the output's missing parent folders; remove them again (only those) if the work fails."""
    created = []
    parent = absolute(out).parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    reason = _parent_refusal(Path(out), absolute(out))
    if reason:
        raise InputError(reason)
    try:
        absolute(out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_refusal(exc, out) from None
    try:
        yield
    except BaseException:
        for folder in created:  # deepest first; one that is not empty (someone else's files) stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _file_refusal(out: Path, path: Path, st: os.stat_result, force: bool, proof: Proof) -> str | None:
    if stat.S_ISDIR(st.st_mode):
        return f"{out} is a directory; -o must name a file here"
    if not stat.S_ISREG(st.st_mode):
        return f"{out} is {kind_of(st.st_mode)}; ropeconv replaces only {proof.what} — remove it or choose " \
               "another output path"
    if not proof.holds(path):
        return f"{out} is a file ropeconv did not write ({proof.missing}); --force replaces only {proof.what} — " \
               "move it or choose another output path"
    return None if force else f"{out} already exists ({proof.what}); pass --force to replace it"


def _ropeconv_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                return False
        from ropeconv.gguf_io.reader import read_gguf

        gguf = read_gguf(path)
    except Exception:  # unreadable or damaged: not provably ropeconv's
        return False
    return all(isinstance(gguf.value(key), str) for key in GGUF_PROVENANCE)


GGUF_PROOF = Proof("a GGUF ropeconv wrote", f"no {GGUF_PROVENANCE[0]} metadata", _ropeconv_gguf)


def _manifest(path: Path) -> dict | None:
    """ropeconv's manifest.json (its version and a files table), or None."""
    from ropeconv.manifest import read_manifest  # the one strict reader: bounded before reading, typed

    file = path / MANIFEST
    try:
        if not stat.S_ISREG(os.lstat(file).st_mode):
            return None
        data = read_manifest(path)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("ropeconv_version"), str) \
            or not isinstance(data.get("files"), dict):
        return None
    return data


def _unlisted(root: Path, listed: set[str], limit: int = SHOWN + 1) -> tuple[list[str], list[str]]:
    """Entries under root that the manifest does not list (links and special files count), first few; and the
    folders this process cannot list or empty (a user's unreadable folder: replacing would leave it behind)."""
    found: list[str] = []
    blocked: list[str] = []

    def unreadable(exc: OSError) -> None:
        blocked.append(Path(os.fsdecode(exc.filename)).relative_to(root).as_posix() + "/")

    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=False):
        rel = Path(folder).relative_to(root)
        # root itself: an unwritable one cannot be renamed aside either, so the OS refuses before anything moves
        if rel.parts and not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
            blocked.append(rel.as_posix() + "/")
        for name in sorted(dirs):
            if os.path.islink(os.path.join(folder, name)):
                found.append((rel / name).as_posix())
        for name in sorted(files):
            item = (rel / name).as_posix()
            if item == MANIFEST:
                continue
            if item not in listed or not stat.S_ISREG(os.lstat(os.path.join(folder, name)).st_mode):
                found.append(item)
        if len(found) >= limit or blocked:
            break
        dirs.sort()
    return found, blocked


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (" and more" if len(names) > SHOWN else "")


# ----------------------------------------------------------------------------- one run per target


@contextlib.contextmanager
def target_lock(out: Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside `out` (flock, exclusive) for the whole run; refuse at once when another run
    holds it. The lock file is unlinked while still held, so nothing is left after success or failure."""
    path = absolute(out)
    key = str(path)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    with _parents(out):
        lock = path.parent / f".{path.name}.lock"
        fd = _acquire(lock, out)
        _held[key] = 1
        try:
            _clear_leftovers(path)
            yield
        finally:
            del _held[key]
            with contextlib.suppress(OSError):
                os.unlink(lock)
            os.close(fd)


def _acquire(lock: Path, out: Path) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise os_refusal(exc, out) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"{out}: another ropeconv run is writing it (it holds {lock}); wait for it to "
                             "finish or choose another output path") from None
        except OSError as exc:
            os.close(fd)
            raise os_refusal(exc, out) from None
        # the holder we waited on may have unlinked the file we opened: then lock the new one
        try:
            same = os.stat(lock, follow_symlinks=False)
        except FileNotFoundError:
            same = None
        mine = os.fstat(fd)
        if same is not None and (same.st_dev, same.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)


_LEFTOVER = r"\.{name}\.[a-z0-9_]{{8}}\.(tmp(\..*)?|old|scratch)"  # tempfile names: staged_dir/file, parity scratch


def _clear_leftovers(path: Path) -> None:
    """Staging a killed run left (only callable under the lock: no live run owns them). A `.old` is a
    previous output moved aside mid-replace: put back when the target is missing, else removed."""
    pattern = re.compile(_LEFTOVER.format(name=re.escape(path.name)))
    leftovers = sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))
    olds = [p for p in leftovers if p.name.endswith(".old")]
    if len(olds) == 1 and not os.path.lexists(path):
        os.replace(olds[0], path)
        leftovers.remove(olds[0])
    elif olds and not os.path.lexists(path):
        leftovers = [p for p in leftovers if p not in olds]  # which one was the output is unknown: keep them
    for p in leftovers:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- OS errors as one line


def os_refusal(exc: OSError, out: Path, staging: Path | None = None) -> InputError:
    """One line naming the path and the OS reason; a path inside the staging area is shown as the target's."""
    code = errno.errorcode.get(exc.errno or 0, "")
    reason = (exc.strerror or str(exc)) + (f", {code}" if code else "")
    where = exc.filename
    if where is not None and staging is not None:
        with contextlib.suppress(ValueError):
            where = Path(out) / Path(os.fsdecode(where)).relative_to(staging)
    named = f"{os.fsdecode(where)}: " if where is not None and str(where) != str(out) else ""
    return InputError(f"cannot write {out}: {named}{reason}; nothing was published")


# ----------------------------------------------------------------------------- atomic publication


@contextlib.contextmanager
def staged_dir(out: Path, force: bool, *, owner: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on clean exit it replaces `out`."""
    out = Path(out)
    with target_lock(out):
        check_target(out, force, owner=owner)
        path = absolute(out)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        except OSError as exc:
            raise os_refusal(exc, out) from None
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a published model should be readable like any dir
            yield tmp
            raise_if_interrupted()  # a signal whose raise was swallowed (a ctypes callback, a __del__)
            _replace(tmp, path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise os_refusal(exc, out, tmp) from None
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
def staged_file(out: Path, force: bool, *, proof: Proof | None = None) -> Iterator[Path]:
    """Yield a temporary sibling path; on clean exit it atomically replaces `out`."""
    with staged_files([(Path(out), proof or GGUF_PROOF)], force) as (tmp,):
        yield tmp


@contextlib.contextmanager
def target_locks(outs: Sequence[Path]) -> Iterator[None]:
    """target_lock on each of `outs` (a set of files one run publishes together), all held until the end."""
    with contextlib.ExitStack() as stack:
        for out in outs:
            stack.enter_context(target_lock(out))
        yield


@contextlib.contextmanager
def staged_files(outs: Sequence[tuple[Path, Proof]], force: bool) -> Iterator[tuple[Path, ...]]:
    """Yield one temporary sibling per (target, proof); on clean exit each replaces its target, in the order
    given (the last one last: its presence can mean the set is complete). Every target is locked and checked
    first (a file replaced must be proven ropeconv's, see replace_refusal). A rename that fails puts back
    the files this call had already published: no mixed set is left."""
    paths = [Path(out) for out, _ in outs]
    with target_locks(paths):
        check_files(outs, force)
        tmps: list[Path] = []
        try:
            for out in paths:
                tmps.append(_temp_file(out))
            yield tuple(tmps)
            raise_if_interrupted()  # a signal whose raise was swallowed (a ctypes callback, a __del__)
            _publish_files(list(zip(tmps, paths)))
        except OSError as exc:
            where = os.fsdecode(exc.filename) if exc.filename is not None else None
            n = next((i for i, tmp in enumerate(tmps) if str(tmp) == where), min(len(tmps), len(paths) - 1))
            raise os_refusal(exc, paths[n], tmps[n] if n < len(tmps) else None) from None
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)


def _temp_file(out: Path) -> Path:
    """An empty `.NAME.XXXXXXXX.tmp.SUFFIX` beside `out` (the suffix kept: runtimes pick themselves by it, a
    staged .gguf is run by llama.cpp), readable like any file the user makes."""
    path = absolute(out)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def _publish_files(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each staged file over its target; when one fails, undo the renames already made. A file replaced
    before the last rename is kept as a hard link `.NAME.XXXXXXXX.old` until the set is complete."""
    done: list[tuple[Path, Path | None]] = []  # (target published, its previous content or None: it was new)
    try:
        for n, (tmp, out) in enumerate(pairs):
            path = absolute(out)
            backup = _link_aside(path) if n < len(pairs) - 1 and os.path.lexists(path) else None
            try:
                os.replace(tmp, path)
            except BaseException:
                if backup is not None:
                    backup.unlink(missing_ok=True)
                raise
            done.append((path, backup))
    except BaseException:
        for path, backup in reversed(done):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, path)
                else:
                    path.unlink()
        raise
    for _, backup in done:
        if backup is not None:
            backup.unlink(missing_ok=True)


def _link_aside(path: Path) -> Path:
    """A hidden sibling holding `path`'s current bytes, to put back if a later rename of the set fails: a hard link,
    or on a filesystem without them (vfat, exFAT, some SMB/FUSE mounts) a copy."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent)
    os.close(fd)
    os.unlink(name)
    try:
        os.link(path, name)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        shutil.copy2(path, name)
    return Path(name)
