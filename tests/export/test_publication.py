"""Every command that writes publishes through export.staging (issue 26, classes 1 and 6): `search -o` and its
side files never over a user's file, the --text, the base or a device, locked, staged and renamed together;
`--save-recipe` refused before anything is published; a report lost on stdout is not "bad input"; `eval -o`
not made by a refused run; `--force` as a user who cannot empty the old output refused before anything moves.

Refusals are checked in the hostile-input style: exit 2, one `ropeconv: error:` line, no traceback, nothing
beside the target, every user file byte-identical. The searches are search/test_search's tiny ones (one thread)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pwd
import shutil
import stat
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

from tests.conftest import assert_refused, listing, run_cli
from tests.hostile.conftest import mounted
from tests.search.test_search import SIZES, TARGET, _one_thread, text, tiny  # noqa: F401  (fixtures)
from tests.test_interrupt import digest


def search_args(base: Path, text_path: Path, out: Path, cache: Path, *extra) -> list:
    return ["search", "longrope", base, "--target-ctx", TARGET, "--text", text_path, *SIZES, "--device", "cpu",
            "--cache-dir", cache, "-o", out, "-q", *extra]


def trio(out: Path) -> list[Path]:
    return [out, out.with_name(out.stem + ".search.jsonl"), out.with_name(out.stem + ".search.png")]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def previous(tiny, text, tmp_path_factory) -> Path:
    """A finished search's three files (and its cache): what a later search may replace with --force only."""
    root = tmp_path_factory.mktemp("previous")
    assert run_cli(*search_args(tiny, text, root / "factors.json", root / "cache")) == 0
    return root


def copy_previous(previous: Path, place: Path) -> Path:
    for path in trio(previous / "factors.json"):
        shutil.copy2(path, place / path.name)
    return place / "factors.json"


# ----------------------------------------------------------------------------- search -o


@pytest.mark.parametrize("case", ["user-file", "text", "base-config", "fifo", "device"])
def test_search_out_over_an_input_or_a_foreign_file_is_refused(case, tiny, text, tmp_path, capsys):
    place = tmp_path / "place"
    place.mkdir()
    text_path = place / "calibration.txt"
    shutil.copy(text, text_path)
    base = Path(shutil.copytree(tiny, tmp_path / "base"))
    out = {"user-file": place / "mine.json", "text": text_path, "base-config": base / "config.json",
           "fifo": place / "pipe", "device": place / "null"}[case]
    if case == "user-file":
        out.write_text('{"short_factor": [1.0]}\n')
    elif case == "fifo":
        os.mkfifo(out)
    elif case == "device":
        try:
            os.mknod(out, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
        except PermissionError:
            pytest.skip("making a device node needs root")
    before, base_before, beside = snapshot(place), digest(base), listing(out.parent)
    st = os.lstat(out)
    rc = run_cli(*search_args(base, text_path, out, tmp_path / "cache"))
    line = assert_refused(capsys, rc, out, beside)
    assert snapshot(place) == before and digest(base) == base_before and listing(base) == sorted(base_before)
    after = os.lstat(out)
    assert (stat.S_IFMT(after.st_mode), after.st_rdev, after.st_ino) == (stat.S_IFMT(st.st_mode), st.st_rdev,
                                                                        st.st_ino)
    assert not (tmp_path / "cache").exists()
    expected = {"text": "--text", "base-config": "inside the base", "fifo": "FIFO", "device": "device",
                "user-file": "did not write"}[case]
    assert expected in line


@pytest.mark.parametrize("side", [".search.jsonl", ".search.png"])
def test_a_side_file_never_replaces_a_users_file(side, tiny, text, tmp_path, capsys):
    mine = tmp_path / f"factors{side}"
    mine.write_bytes(b"\x89PNG\r\n\x1a\nmy own picture" if side.endswith("png") else b'{"phase": "mine"}\n')
    before = snapshot(tmp_path)
    for extra in ((), ("--force",)):  # a user's file is not a previous search's, even with --force
        rc = run_cli(*search_args(tiny, text, tmp_path / "factors.json", tmp_path / "cache", *extra))
        assert_refused(capsys, rc, tmp_path / "factors.json", sorted(before), mentions=(mine.name,))
        assert snapshot(tmp_path) == before


def test_a_previous_search_is_replaced_only_with_force(previous, tiny, text, tmp_path, capsys):
    out = copy_previous(previous, tmp_path)
    before = snapshot(tmp_path)
    rc = run_cli(*search_args(tiny, text, out, previous / "cache"))
    assert_refused(capsys, rc, out, sorted(before), mentions=("already exists", "--force"))
    assert snapshot(tmp_path) == before
    assert run_cli(*search_args(tiny, text, out, previous / "cache", "--force")) == 0
    assert listing(tmp_path) == sorted(before)  # the same three files, nothing beside them
    assert out.read_bytes() == before["factors.json"]  # every fitness value from the cache: the same result


@pytest.mark.parametrize("failing", ["curve", "last-rename"])
def test_a_failed_publication_leaves_the_previous_files_and_nothing_new(failing, previous, tiny, text, tmp_path,
                                                                       capsys, monkeypatch):
    """The three files go in together: a curve that cannot be drawn, or a factors file that cannot be renamed
    after the log and the curve were, leaves the previous search's three files as they were."""
    from ropeconv.export import staging
    from ropeconv.search import plot

    out = copy_previous(previous, tmp_path)
    before = snapshot(tmp_path)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if failing == "curve":
        def draw(path, *args):
            Path(path).write_bytes(b"\x89PNG half")
            raise full
        monkeypatch.setattr(plot, "best_curve", draw)
    else:
        real = os.replace

        def replace(src, dst):
            if Path(dst) == out.absolute():
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
            return real(src, dst)
        monkeypatch.setattr(staging.os, "replace", replace)
    rc = run_cli(*search_args(tiny, text, out, previous / "cache", "--force"))
    monkeypatch.undo()
    assert_refused(capsys, rc, out, sorted(before), mentions=("ENOSPC", "nothing was published"))
    assert snapshot(tmp_path) == before


def test_a_second_search_to_the_same_out_is_refused_by_the_lock(tiny, text, tmp_path, capsys):
    out = tmp_path / "factors.json"
    lock = tmp_path / ".factors.json.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running search holds it
        rc = run_cli(*search_args(tiny, text, out, tmp_path / "cache"))
        assert_refused(capsys, rc, out, [lock.name], mentions=("another ropeconv run",))
    finally:
        os.close(fd)
        lock.unlink()


def test_a_cache_file_that_is_a_link_is_not_appended_through(previous, tiny, text, tmp_path, capsys):
    names = listing(previous / "cache")  # the long and the short search's cache files
    assert len(names) == 2
    cache = tmp_path / "cache"
    cache.mkdir()
    empty, gone = tmp_path / "empty.txt", tmp_path / "not-there.txt"
    empty.write_bytes(b"")
    out = tmp_path / "factors.json"
    for target in (empty, gone):  # a link to a user's (empty) file, a link to where a file would be made
        for name in names:
            (cache / name).unlink(missing_ok=True)
            (cache / name).symlink_to(target)
        rc = run_cli(*search_args(tiny, text, out, cache))
        assert_refused(capsys, rc, out, ["cache", "empty.txt"], mentions=("link",))
        assert empty.read_bytes() == b"" and not gone.exists()


# ----------------------------------------------------------------------------- --save-recipe, --json, eval -o


def extend_args(base: Path, out: Path, *extra) -> list:
    return ["extend", base, "--method", "yarn", "--factor", "2", "--no-verify", "-q", "-o", out, *extra]


@pytest.mark.parametrize("folder", ["read-only", "full"])
def test_save_recipe_into_a_read_only_or_full_folder_is_refused_before_anything_is_published(folder, tiny, tmp_path,
                                                                                           capsys):
    place = tmp_path / "place"
    (place / "saves").mkdir(parents=True)
    out, saves = place / "out", place / "saves"
    if folder == "read-only":
        commands = [["mount", "--bind", str(saves), str(saves)], ["mount", "-o", "remount,bind,ro", str(saves)]]
        said = "Read-only file system"
    else:
        commands = [["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(saves)]]
        said = "No space left on device"
    with mounted(saves, *commands):
        if folder == "full":
            with open(saves / "filler", "wb", buffering=0) as fh, pytest.raises(OSError):
                while True:
                    fh.write(b"x" * 4096)
        before = snapshot(saves)
        rc = run_cli(*extend_args(tiny, out, "--save-recipe", saves / "saved.yaml"))
        assert_refused(capsys, rc, out, ["saves"], mentions=("saved.yaml", said))
        assert snapshot(saves) == before and listing(saves) == sorted(before)


@pytest.mark.parametrize("where", ["out", "inside-base", "user-file", "holding-out"])
def test_save_recipe_where_it_cannot_go_is_refused_before_anything_is_published(where, tiny, tmp_path, capsys):
    """holding-out: -o R/out with --save-recipe R (R absent) made R a folder for the output, published it, then
    failed to rename the recipe onto that folder: exit 2 after publishing."""
    base = Path(shutil.copytree(tiny, tmp_path / "base"))
    place = tmp_path / "place"
    place.mkdir()
    out = place / ("recipe.yaml/out" if where == "holding-out" else "out")
    saved = {"out": out, "inside-base": base / "recipe.yaml", "user-file": place / "notes.yaml",
             "holding-out": place / "recipe.yaml"}[where]
    if where == "user-file":
        saved.write_text("my notes\n")
    before, base_before = snapshot(place), digest(base)
    rc = run_cli(*extend_args(base, out, "--save-recipe", saved))
    if where == "holding-out":
        before_parent = sorted(before)
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "--save-recipe" in err, err
        assert listing(place) == before_parent  # no recipe.yaml folder, no output inside it
    else:
        assert_refused(capsys, rc, out, sorted(before),
                       mentions=("--save-recipe" if where != "user-file" else "notes",))
    assert snapshot(place) == before and digest(base) == base_before


def test_json_that_cannot_be_written_after_publishing_is_not_bad_input(tiny, tmp_path, capsys, monkeypatch):
    """The output and the recipe are published; stdout (`--json > /dev/full`) fails: one line saying the output
    was published, exit 74 (EX_IOERR) — not exit 2, which promises nothing was written."""
    out, saved = tmp_path / "out", tmp_path / "saved.yaml"
    full = open("/dev/full", "w")
    monkeypatch.setattr(sys, "stdout", full)
    try:
        rc = run_cli(*extend_args(tiny, out, "--json", "--save-recipe", saved))
    finally:
        monkeypatch.undo()
        full.close()  # what was left buffered for it is dropped, not raised again at exit
    err = capsys.readouterr().err
    assert rc == 74, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: ") and "Traceback" not in err
    assert "was published" in lines[0] and "ENOSPC" in lines[0]
    assert (out / "manifest.json").is_file() and saved.is_file()


def test_eval_out_is_not_made_by_a_refused_run(tiny, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = run_cli("eval", "passkey", tiny, "--lengths", "1k", "--trials", "1", "--device", "cpu", "--runtime", "hf",
                 "--max-memory", "cpu=1KiB", "-q", "-o", out)
    assert_refused(capsys, rc, out, [], mentions=("--max-memory",))


# ----------------------------------------------------------------------------- --force as a user, not root


def as_user(name: str, work, err: Path) -> int:
    """work() in a forked child running as `name` (root only); its exit code. stderr goes to `err`."""
    user = pwd.getpwnam(name)
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 99
        try:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            sys.stderr = open(err, "w")
            code = work()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def chown_tree(root: Path, uid: int, gid: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.lchown(path, uid, gid)


def test_force_as_a_user_over_an_output_holding_an_unreadable_folder_moves_nothing(tiny):
    """As a user (not root, who reads everything), an output folder holding the user's unreadable subfolder
    cannot be emptied: --force is refused before the old output is moved aside, so no `.out.*.old` with the
    user's files is left beside it. The run is a forked child turned `nobody` (a python that `nobody` cannot
    exec may live under /root, so no subprocess)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user (as a user, make the folder yourself: chmod 000)")
    nobody = pwd.getpwnam("nobody")
    place = Path(tempfile.mkdtemp(prefix="ropeconv-nobody-", dir="/tmp"))  # pytest's tmp is root's own (0700)
    try:
        place.chmod(0o755)
        base = Path(shutil.copytree(tiny, place / "base"))
        out = place / "out"
        assert run_cli(*extend_args(base, out)) == 0  # as root: also imports what the child runs
        private = out / "private"
        private.mkdir()
        (private / "diary.txt").write_text("mine\n")
        chown_tree(place, nobody.pw_uid, nobody.pw_gid)
        private.chmod(0)
        before = digest(out)
        err = place / "err.txt"
        rc = as_user("nobody", lambda: run_cli(*extend_args(base, out, "--force")), err)
        message = err.read_text()
        assert rc == 2, message
        lines = message.splitlines()
        assert len(lines) == 1 and "private" in lines[0] and "Traceback" not in message, message
        assert listing(place) == ["base", "err.txt", "out"]  # no .out.XXXXXXXX.old, no staging, no lock
        assert digest(out) == before
    finally:
        for path in place.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(place)


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "summary"])
def test_recipe_run_report_that_cannot_be_written_after_publishing_is_not_bad_input(tiny, tmp_path, capsys,
                                                                                   monkeypatch, as_json):
    """recipe run publishes, then stdout fails: exit 74 naming the published output (before: exit 2)."""
    saved, first, out = tmp_path / "saved.yaml", tmp_path / "first", tmp_path / "out"
    assert run_cli(*extend_args(tiny, first, "--dry-run", "--save-recipe", saved)) == 0
    capsys.readouterr()
    full = open("/dev/full", "w")
    monkeypatch.setattr(sys, "stdout", full)
    try:
        rc = run_cli("recipe", "run", saved, "--set", f"out={out}", "-q", *(["--json"] if as_json else []))
    finally:
        monkeypatch.undo()
        full.close()
    err = capsys.readouterr().err
    assert rc == 74, err
    lines = err.splitlines()
    assert len(lines) == 1 and "was published" in lines[0] and "Traceback" not in err
    assert (out / "manifest.json").is_file()


def test_a_set_of_files_is_republished_where_hard_links_are_not_supported(tmp_path, monkeypatch):
    """Replacing a set of files keeps the earlier ones aside (to put back if a later rename fails) as hard links;
    on vfat/exFAT and some SMB/FUSE mounts os.link fails (EPERM): before, every re-publication there was exit 2."""
    from ropeconv.export import staging

    ours = staging.Proof("a test file", "no marker", lambda p: p.read_bytes().startswith(b"ours"))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for round_ in (1, 2):  # the first publishes, the second replaces both
        with staging.staged_files([(a, ours), (b, ours)], force=True) as (ta, tb):
            ta.write_bytes(b"ours a%d" % round_)
            tb.write_bytes(b"ours b%d" % round_)
        if round_ == 1:
            def no_links(*args, **kwargs):
                raise OSError(errno.EPERM, "Operation not permitted")

            monkeypatch.setattr(staging.os, "link", no_links)
    assert a.read_bytes() == b"ours a2" and b.read_bytes() == b"ours b2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # nothing left aside


def test_a_search_log_past_the_proof_read_cap_is_still_proven_searchs(tmp_path, monkeypatch):
    """Search's own log reaches ~300 MB at its evaluation bound, past the 256 MiB a proof reads whole; the log is
    proven line by line, so --force can replace the longest log search writes (here the cap is made small)."""
    from ropeconv.search import publish

    log = tmp_path / "f.search.jsonl"
    record = {"phase": "long", "generation": 0, "origin": "seed", "factors": [1.0] * 32, "ppl": 12.5}
    log.write_text("".join(json.dumps(record) + "\n" for _ in range(50)))
    monkeypatch.setattr(publish, "MAX_PROOF_BYTES", log.stat().st_size // 4)
    assert publish.LOG_PROOF.holds(log)
    log.write_text(log.read_text() + "not a record\n")
    assert not publish.LOG_PROOF.holds(log)
