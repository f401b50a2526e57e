"""Hostile paths and outputs: what an output may replace (--force: only a previous ropeconv output or an empty
folder; never a home folder, a recipe's folder, a user's file, a link or a GGUF ropeconv did not write), one run
per target (the lock; two runs publish once; kill -9 mid-write, then a clean run), OS errors as one line (disk
full, read-only, immutable, unwritable, a file as parent, the current folder or a mount point as -o), a FIFO
never read, outputs overlapping the base, folder names that are not UTF-8, and strict JSON written.

Every refusal is checked for: exit 2, exactly one `ropeconv: error:` line, no traceback, nothing left beside the
target (no `.NAME.*.tmp`, `.old` or `.lock` sibling) and every previous output or user file byte-identical. A
real subprocess runs the CLI wherever a lock, a signal or a mount is involved. The mount cases (tmpfs for a full
disk, a read-only bind mount, a mount point as -o) and `chattr +i` need root; elsewhere they skip, saying so.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from ropeconv.errors import InputError
from tests.conftest import (
    add_byte_level_tokenizer,
    assert_refused,
    listing,
    read_json,
    run_cli,
)
from tests.hostile.conftest import (
    alarm,
    cli,
    extend,
    extend_args,
    extend_yarn,
    immutable,
    mounted,
    one_line,
    sub,
    tree,
    write_recipe,
)
from tests.test_interrupt import Run, digest, ropeconv_cmd


@pytest.fixture(scope="module")
def ggufs(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """A GGUF ropeconv wrote (a base for the retrofit) and the same GGUF without ropeconv's keys."""
    from ropeconv.gguf_io.reader import read_gguf
    from ropeconv.gguf_io.writer import rewrite_gguf

    root = tmp_path_factory.mktemp("ggufs")
    hf = add_byte_level_tokenizer(Path(shutil.copytree(tiny_llama, root / "tok")))
    assert run_cli("extend", hf, "--method", "none", "--to", "gguf", "--outtype", "f32", "--no-verify", "-q",
                   "-o", root / "conv") == 0
    ours = next((root / "conv").glob("*.gguf"))
    src = read_gguf(ours)
    foreign = root / "foreign.gguf"
    rewrite_gguf(src, foreign, drop_keys={f.key for f in src.fields if f.key.startswith("ropeconv.")})
    return {"ours": ours, "foreign": foreign}


# ----------------------------------------------------------------------------- 2. what --force may replace


def test_force_never_replaces_a_home_folder(tmp_path, base, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export PS1='$ '\n")
    monkeypatch.setenv("HOME", str(home))
    recipe = write_recipe(tmp_path / "r" / "r.yaml", base, out="~")
    one_line(*cli(capsys, "recipe", "run", recipe, "--force", "-q"), str(home), "home folder")
    assert listing(home) == [".bashrc"] and (home / ".bashrc").read_text() == "export PS1='$ '\n"
    one_line(*cli(capsys, *extend_args(base, home, "--force")), "home folder")
    assert listing(home) == [".bashrc"] and sorted(listing(tmp_path)) == ["base", "home", "r"]


@pytest.mark.parametrize("out", ["", "."])
def test_force_never_replaces_the_recipes_own_folder(tmp_path, base, capsys, out):
    recipe = write_recipe(tmp_path / "recipes" / "release.yaml", base, out=out)
    text = recipe.read_bytes()
    one_line(*cli(capsys, "recipe", "run", recipe, "--force", "-q"), "release.yaml", "not a ropeconv output")
    assert recipe.read_bytes() == text and listing(recipe.parent) == ["release.yaml"]
    assert sorted(listing(tmp_path)) == ["base", "recipes"]


def test_force_replaces_a_previous_output_or_an_empty_folder_and_nothing_else(base, place, capsys):
    out = place / "out"
    assert cli(capsys, *extend_args(base, out))[0] == 0
    assert cli(capsys, *extend_args(base, out, "--force"))[0] == 0  # a previous ropeconv output
    empty = place / "empty"
    empty.mkdir()
    assert cli(capsys, *extend_args(base, empty, "--force"))[0] == 0  # an empty folder
    assert "manifest.json" in listing(empty)
    # a folder of the user's: refused, naming what is in it
    users = place / "users"
    users.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (users / name).write_text(name)
    one_line(*cli(capsys, *extend_args(base, users, "--force")), "not a ropeconv output", "a.txt, b.txt, c.txt")
    assert listing(users) == ["a.txt", "b.txt", "c.txt", "d.txt"]
    # a regular file where the folder goes
    file = place / "notes.txt"
    file.write_text("notes\n")
    one_line(*cli(capsys, *extend_args(base, file, "--force")), "regular file, not a folder")
    assert file.read_text() == "notes\n"
    # a link, even to a previous output
    (place / "link").symlink_to(out)
    one_line(*cli(capsys, *extend_args(base, place / "link", "--force")), "symbolic link")
    assert (place / "link").resolve() == out.resolve()
    assert listing(place) == ["empty", "link", "notes.txt", "out", "users"]


def test_force_replaces_only_a_gguf_ropeconv_wrote(ggufs, place, capsys):
    out = place / "x.gguf"
    args = ["extend", ggufs["foreign"], "--method", "yarn", "--factor", "2", "--no-verify", "-q", "-o", out]
    # a GGUF without ropeconv's provenance keys, and a file that is no GGUF at all: never replaced
    for target in (ggufs["foreign"], None):
        if target is None:
            out.write_bytes(b"my own notes, not a model\n")
        else:
            shutil.copyfile(target, out)
        before = out.read_bytes()
        one_line(*cli(capsys, *args, "--force"), str(out), "ropeconv did not write")
        assert out.read_bytes() == before and listing(place) == ["x.gguf"]
    # a GGUF ropeconv wrote: replaced with --force (without it: refused)
    shutil.copyfile(ggufs["ours"], out)
    one_line(*cli(capsys, *args), "already exists", "--force")
    assert cli(capsys, *args, "--force")[0] == 0
    assert listing(place) == ["x.gguf"]
    # a folder where the .gguf goes
    out.unlink()
    out.mkdir()
    one_line(*cli(capsys, *args, "--force"), "is a directory")
    assert listing(place) == ["x.gguf"] and listing(out) == []


# ----------------------------------------------------------------------------- 3. one run per target


def test_a_run_is_refused_while_another_holds_the_target(base, place):
    out = place / "out"
    lock = place / ".out.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running ropeconv holds
        rc, stdout, err = sub(extend_args(base, out))
    finally:
        os.close(fd)
    one_line(rc, err, str(out), "another ropeconv run")
    assert "wrote" not in stdout
    assert listing(place) == [".out.lock"]  # ours: the refused run made nothing


def test_two_runs_started_together_publish_once(base, place):
    out = place / "out"
    args = ["extend", base, "--method", "yarn", "--factor", "4", "--device", "cpu", "-q", "-o", out]
    procs = [subprocess.Popen(ropeconv_cmd() + [str(a) for a in args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    won = [r for r in results if r[0] == 0]
    lost = [r for r in results if r[0] != 0]
    assert len(won) == 1 and len(lost) == 1, results
    assert won[0][1].startswith("wrote ") and "wrote" not in lost[0][1]
    # the second either met the first's lock or, if it started after the first had finished, its output
    line = one_line(lost[0][0], lost[0][2], str(out))
    assert "another ropeconv run" in line or "already exists" in line, line
    assert listing(place) == ["out"]
    assert read_json(out / "manifest.json")["parity"]["safetensors"]["passed"]


def test_kill_9_mid_write_then_a_clean_run(tmp_path, place, capsys):
    from tests.conftest import make_tiny
    from tests.test_interrupt import extend_args as slow_args

    slow = make_tiny(tmp_path, "llama", name="slow", num_hidden_layers=4, hidden_size=128, intermediate_size=256)
    out = place / "out"
    assert cli(capsys, "extend", slow, "--method", "linear", "--factor", "2", "--no-verify", "-q", "-o", out)[0] == 0
    previous = digest(out)
    run = Run(slow_args(slow, out, "--force"))
    try:
        run.wait_for_line("reference:", timeout=600)
        run.proc.send_signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
    finally:
        run.kill()
    left = sorted(p for p in listing(place) if p != "out")
    assert any(p.endswith(".tmp") for p in left) and ".out.lock" in left, left  # what a kill -9 leaves
    assert digest(out) == previous
    # the next run holds the lock, so no other run owns that staging: it is removed
    assert cli(capsys, "extend", slow, "--method", "yarn", "--factor", "4", "--no-verify", "-q", "-o", out,
               "--force")[0] == 0
    assert listing(place) == ["out"] and read_json(out / "manifest.json")["plan"]["method"] == "yarn"


def test_an_output_moved_aside_by_a_killed_replace_is_put_back(base, place, capsys):
    out = place / "out"
    assert cli(capsys, *extend_args(base, out))[0] == 0
    previous = digest(out)
    os.rename(out, place / ".out.k1ll3d_9.old")  # killed between the two renames of a --force replace
    (place / ".out.k1ll3d_8.tmp").mkdir()  # and its staging
    one_line(*cli(capsys, *extend_args(base, out)), "already exists", "--force")
    assert listing(place) == ["out"] and digest(out) == previous


# ----------------------------------------------------------------------------- 6. non-regular files


def test_a_fifo_is_refused_and_never_read(base, place, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    recipe = write_recipe(tmp_path / "r.yaml", base, out=str(place / "out"),
                          method={"name": "freqs", "factor": 2, "factors": str(fifo)})
    with alarm():
        one_line(*cli(capsys, "recipe", "run", fifo), "FIFO")
        rc, err = cli(capsys, "recipe", "check", fifo)
        assert rc == 2 and "FIFO" in err.splitlines()[0] and "Traceback" not in err
        one_line(*cli(capsys, "recipe", "run", recipe), "method.factors", "FIFO")
        one_line(*cli(capsys, "extend", base, "--method", "freqs", "--factor", "2", "--factors", fifo,
                      "--no-verify", "-o", place / "out"), "--factors", "FIFO")
        one_line(*cli(capsys, *extend_args(base, place / "out", "--save-recipe", fifo)), "--save-recipe", "FIFO")
    assert listing(place) == [] and sorted(listing(tmp_path)) == ["base", "pipe", "place", "r.yaml"]
    assert os.path.exists(fifo) and not os.path.isfile(fifo)


# ----------------------------------------------------------------------------- 7. OS errors


def test_disk_full(base, place, capsys):
    disk = place / "disk"
    disk.mkdir()
    with mounted(disk, ["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(disk)]):
        (disk / "keep.txt").write_text("mine\n")
        out = disk / "out"
        assert cli(capsys, *extend_args(base, out))[0] == 0  # ~570 kB: fits once, not twice
        previous = digest(out)
        rc, _, err = sub(extend_args(base, out, "--force", "--factor", "8"))
        one_line(rc, err, str(out), "No space left on device", "ENOSPC", "nothing was published")
        assert listing(disk) == ["keep.txt", "out"] and digest(out) == previous
        one_line(*cli(capsys, *extend_args(base, disk / "new")), str(disk / "new"), "ENOSPC")
        assert listing(disk) == ["keep.txt", "out"] and (disk / "keep.txt").read_text() == "mine\n"


def test_read_only_target(base, place, capsys):
    ro = place / "ro"
    ro.mkdir()
    out = ro / "out"
    assert cli(capsys, *extend_args(base, out))[0] == 0
    previous = digest(out)
    with mounted(ro, ["mount", "--bind", str(ro), str(ro)], ["mount", "-o", "remount,bind,ro", str(ro)]):
        rc, _, err = sub(extend_args(base, out, "--force"))
        one_line(rc, err, str(out), "Read-only file system", "EROFS")
        assert listing(ro) == ["out"] and digest(out) == previous


def test_immutable_target_and_parent(base, place, capsys):
    out = place / "out"
    assert cli(capsys, *extend_args(base, out))[0] == 0
    previous = digest(out)
    with immutable(out):
        rc, _, err = sub(extend_args(base, out, "--force"))
        one_line(rc, err, str(out), "Operation not permitted", "EPERM")
        assert listing(place) == ["out"] and digest(out) == previous
    with immutable(place):
        one_line(*cli(capsys, *extend_args(base, place / "new")), str(place / "new"), "Operation not permitted",
                 "EPERM")
        assert listing(place) == ["out"]


def test_unwritable_parent_without_root(base, place, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores permission bits; EROFS and EPERM are tested with a mount and chattr")
    place.chmod(0o555)
    try:
        one_line(*cli(capsys, *extend_args(base, place / "out")), str(place / "out"), "Permission denied")
    finally:
        place.chmod(0o755)
    assert listing(place) == []


def test_parent_is_a_file(base, place, capsys):
    (place / "file").write_text("x")
    one_line(*cli(capsys, *extend_args(base, place / "file" / "out")), "not a folder", "ENOTDIR")
    assert listing(place) == ["file"]


def test_output_is_the_current_folder_or_a_mount_point(base, place, capsys, monkeypatch):
    here = place / "here"
    here.mkdir()
    with monkeypatch.context() as m:
        m.chdir(here)
        one_line(*cli(capsys, *extend_args(base, ".", "--force")), "current folder")
    assert listing(here) == [] and listing(place) == ["here"]
    point = place / "point"
    point.mkdir()
    with mounted(point, ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(point)]):
        rc, _, err = sub(extend_args(base, point, "--force"))  # empty, so --force may replace it: the OS says no
        one_line(rc, err, str(point), "Device or resource busy", "EBUSY")
        assert listing(point) == [] and listing(place) == ["here", "point"]


# ----------------------------------------------------------------------------- the output


def test_existing_output_without_force_is_untouched(capsys, base, out):
    out.mkdir()
    (out / "keep.txt").write_text("precious\n")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(bytes(range(256)))
    digest = tree(out)
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--force",))
    assert tree(out) == digest


def test_existing_output_file_without_force_is_untouched(capsys, base, out):
    out.write_text("not a directory\n")
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--force",))
    assert out.read_text() == "not a directory\n"


def test_existing_output_with_force_is_replaced(capsys, base, out):
    # --force replaces a previous ropeconv output (the --force tests above: and nothing else)
    assert extend(base, out, "--method", "linear", "--factor", "2", "--no-verify", "-q") == 0
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify", "--force")
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert read_json(out / "manifest.json")["plan"]["method"] == "yarn"
    assert {"config.json", "model.safetensors", "manifest.json"} <= set(listing(out))
    assert listing(out.parent) == [out.name], "a staging or old-output sibling was left behind"


def test_output_below_a_file(capsys, base, tmp_path):
    """(Missing parent folders are created: tests/export/test_card_options.py.)"""
    (tmp_path / "no").write_text("a file where a folder must be")
    out = tmp_path / "no" / "such" / "dir"
    before = listing(tmp_path)
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--no-verify", "-o", out)
    captured = capsys.readouterr()
    assert rc == 2 and "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: "), captured.err
    assert listing(tmp_path) == before


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_overlapping_the_base_is_refused(capsys, base, where):
    target = base if where == "same" else base / "sub"
    before = sorted(p.name for p in base.iterdir())
    rc = extend(base, target, "--method", "yarn", "--factor", "4", "--force", "--no-verify")
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overlaps the base" in err[0]
    assert sorted(p.name for p in base.iterdir()) == before


# ----------------------------------------------------------------------------- 11: folder names that are not UTF-8


def test_base_folder_name_not_utf8(capsys, tiny_llama, tmp_path):
    """Working output: the card shows the name with \\xNN escapes, the manifest and config are strict JSON, the
    GGUF records the base path's exact bytes, and parity runs (its runtimes reached through a UTF-8 alias)."""
    base = add_byte_level_tokenizer(Path(shutil.copytree(tiny_llama, tmp_path / "base")))
    base = base.rename(tmp_path / os.fsdecode(b"base-\xff\xfe"))  # after: the tokenizer library cannot save there
    out = tmp_path / "outputs" / os.fsdecode(b"out-\xfe")
    out.parent.mkdir()
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "2", "--to", "safetensors,gguf", "-q", "-o", out)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "base-\\xff\\xfe" in (out / "README.md").read_text(encoding="utf-8")
    for f in ("manifest.json", "config.json"):
        strict_json(out / f)
    manifest = read_json(out / "manifest.json")
    assert manifest["base"]["path"] == str(base.resolve())  # JSON's \udcff escapes: the path round-trips
    assert set(manifest["parity"]) == {"safetensors", "gguf"}  # both proven in their runtimes
    from ropeconv.gguf_io import read_gguf

    gguf_file = next(out.glob("*.gguf"))
    recorded = read_gguf(gguf_file).value("ropeconv.base_path")
    assert os.fsencode(recorded) == os.fsencode(str(base.resolve()))
    assert run_cli("inspect", out, "--json") == 0
    strict_json_text(capsys.readouterr().out)


def test_onnx_output_folder_not_utf8(capsys, tiny_llama, tmp_path):
    """onnx.checker takes its path as UTF-8 text: it is handed an alias."""
    out = tmp_path / os.fsdecode(b"onnx-\xff")
    rc = run_cli("extend", tiny_llama, "--method", "yarn", "--factor", "2", "--to", "onnx", "--no-verify", "-q",
                 "-o", out)
    assert rc == 0, capsys.readouterr().err
    assert (out / "onnx" / "model.onnx").is_file()


# ----------------------------------------------------------------------------- 13: non-finite numbers


def _reject(token: str):
    raise ValueError(f"{token} is not JSON")


def strict_json_text(text: str):
    return json.loads(text, parse_constant=_reject)


def strict_json(path: Path):
    return strict_json_text(path.read_text(encoding="utf-8"))


def test_written_json_is_strict(capsys, base, out):
    assert extend_yarn(base, out, "--no-verify", "-q") == 0
    for f in ("config.json", "manifest.json"):
        strict_json(out / f)
    from ropeconv import jsontext

    with pytest.raises(InputError, match="non-finite"):
        jsontext.dumps({"rope_theta": math.inf}, "config.json")
