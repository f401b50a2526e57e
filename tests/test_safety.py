"""Nothing lost, nothing crashed (issue 14): what an output may replace, one run per target, OS errors as
one line, non-regular files refused before they block, recipe check and run refusing alike, pickles in
verify only on the user's word.

Every refusal is checked for: exit 2, exactly one `ropeconv: error:` line, no traceback, nothing left
beside the target (no `.NAME.*.tmp`, `.old` or `.lock` sibling) and every previous output or user file
byte-identical. A real subprocess runs the CLI wherever a lock, a signal or a mount is involved. The
mount cases (tmpfs for a full disk, a read-only bind mount, a mount point as -o) and `chattr +i` need
root; elsewhere they skip, saying so.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import add_byte_level_tokenizer, listing, read_json, run_cli
from test_interrupt import Run, digest, ropeconv_cmd

ALARM_S = 30  # a read that blocks (a FIFO opened for reading) fails the test instead of hanging it


# ----------------------------------------------------------------------------- helpers


def one_line(rc: int, err: str, *words: str) -> str:
    assert rc == 2, f"exit {rc}, expected 2; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: "), f"expected one error line:\n{err}"
    for word in words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    print("REFUSED:", lines[0])
    return lines[0]


def cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = run_cli(*args)
    return rc, capsys.readouterr().err


def sub(args: list, *, cwd: Path | None = None, timeout: float = 600) -> tuple[int, str, str]:
    p = subprocess.run(ropeconv_cmd() + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return p.returncode, p.stdout, p.stderr


def extend_args(base: Path, out: Path, *extra) -> list:
    return ["extend", base, "--method", "yarn", "--factor", "4", "--no-verify", "-q", "-o", out, *extra]


def write_recipe(path: Path, base: Path, out: str, **changes) -> Path:
    data = {"base": {"path": str(base)}, "method": {"name": "yarn", "factor": 2},
            "outputs": [{"format": "safetensors"}], "out": out, "parity": {"verify": False, "device": "cpu"}}
    data.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@contextlib.contextmanager
def alarm(seconds: int = ALARM_S):
    def fail(signum, frame):  # noqa: ARG001
        raise AssertionError(f"blocked for {seconds}s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (mount / chattr); not root here")


@contextlib.contextmanager
def mounted(target: Path, *commands: list[str]):
    """Run mount commands on target (root only); always unmounted after."""
    need_root("mounting")
    done = 0
    try:
        for command in commands:
            p = subprocess.run(command, capture_output=True, text=True)
            if p.returncode != 0:
                pytest.skip(f"`{' '.join(command)}` failed here: {p.stderr.strip()}")
            done += 1
        yield target
    finally:
        for _ in range(min(done, 1)):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextlib.contextmanager
def immutable(path: Path):
    need_root("chattr +i")
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    p = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {p.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


@pytest.fixture
def place(tmp_path) -> Path:
    """An empty folder for outputs: "nothing left beside the target" is "its listing is as expected"."""
    folder = tmp_path / "place"
    folder.mkdir()
    return folder


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


# ----------------------------------------------------------------------------- 1. a recipe's own output


def test_recipe_replaces_only_its_own_output_and_never_a_users_file(tmp_path, base, capsys):
    a = write_recipe(tmp_path / "a" / "r.yaml", base, out=str(tmp_path / "out"))
    b = write_recipe(tmp_path / "b" / "r.yaml", base, out=str(tmp_path / "out"), method={"name": "linear",
                                                                                         "factor": 3})
    out = tmp_path / "out"
    assert cli(capsys, "recipe", "run", a, "-q")[0] == 0
    made = digest(out)
    # its own output (same recipe file), changed recipe: replaced without --force
    assert cli(capsys, "recipe", "run", a, "-q", "--set", "method.factor=4")[0] == 0
    assert read_json(out / "manifest.json")["plan"]["factor"] == 4.0
    made = digest(out)
    # another recipe's output: needs --force
    one_line(*cli(capsys, "recipe", "run", b, "-q"), "already exists", str(a.resolve()), "--force")
    assert digest(out) == made
    # a file of the user's in it: refused for its own recipe, for another, with --force too, naming the file
    (out / "mine.txt").write_text("mine\n")
    mine = digest(out)
    for args in ((a, "--set", "method.factor=8"), (b,), (b, "--force"), (a, "--force")):
        one_line(*cli(capsys, "recipe", "run", *args, "-q"), "mine.txt", "does not list")
        assert digest(out) == mine
    assert sorted(listing(tmp_path)) == ["a", "b", "base", "out"]


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
    from conftest import make_tiny
    from test_interrupt import extend_args as slow_args

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


# ----------------------------------------------------------------------------- 10. --set and --save-recipe


@pytest.mark.parametrize("assignment", ["method.factor=[1,", "method.factor={a: 1", "card.title='x",
                                        "method.factor=*x"])
def test_set_with_bad_yaml(tmp_path, base, capsys, assignment):
    recipe = write_recipe(tmp_path / "r.yaml", base, out="out")
    one_line(*cli(capsys, "recipe", "run", recipe, "--set", assignment), "--set", "not valid YAML")
    rc, err = cli(capsys, "recipe", "check", recipe, "--set", assignment)
    assert rc == 2 and "not valid YAML" in err.splitlines()[0] and "Traceback" not in err
    assert sorted(listing(tmp_path)) == ["base", "r.yaml"]


@pytest.mark.parametrize("args, words", [
    (("--factor", "1"), ("method.factor",)),
    (("--factor", "2", "--original-ctx", "0"), ("base.original_ctx",)),
    (("--factor", "2", "--beta-fast", "0.5"), ("--beta-fast",)),  # refused by the run, not the schema
], ids=["factor-1", "original-ctx-0", "refused-run"])
def test_save_recipe_writes_nothing_when_refused(base, place, capsys, args, words):
    saved = place / "saved.yaml"
    one_line(*cli(capsys, "extend", base, "--method", "yarn", *args, "--no-verify", "-o", place / "out",
                  "--save-recipe", saved), *words)
    assert listing(place) == []


def test_save_recipe_writes_nothing_when_the_output_is_refused(base, place, capsys):
    out = place / "out"
    assert cli(capsys, *extend_args(base, out))[0] == 0
    one_line(*cli(capsys, *extend_args(base, out, "--save-recipe", place / "saved.yaml")), "already exists")
    assert listing(place) == ["out"]
    assert cli(capsys, *extend_args(base, out, "--force", "--save-recipe", place / "saved.yaml"))[0] == 0
    assert listing(place) == ["out", "saved.yaml"]  # written once the run succeeded


# ----------------------------------------------------------------------------- 15. pickles in verify


def test_verify_takes_allow_pickle(tmp_path, base, place, capsys):
    import torch
    from safetensors.torch import load_file

    out = place / "out"
    assert cli(capsys, *extend_args(base, out))[0] == 0
    pickled = Path(shutil.copytree(base, tmp_path / "pickled"))
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    verify = ("verify", out, "--device", "cpu", "--tokens", "16", "-q")
    one_line(*cli(capsys, *verify, "--base", pickled), str(pickled), "pytorch_model.bin", "--allow-pickle")
    assert cli(capsys, *verify, "--base", pickled, "--allow-pickle")[0] == 0
    # an output folder whose weights are a pickle
    shutil.copyfile(pickled / "pytorch_model.bin", out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()
    one_line(*cli(capsys, *verify), str(out), "pytorch_model.bin", "--allow-pickle")


# ----------------------------------------------------------------------------- 16. check refuses what run refuses


@pytest.mark.parametrize("sets", [["method.factor=1e400"], ["method.factor=.inf"], ["method.factor=-.inf"],
                                  ["method.factor=.nan"], ["method.factor=1e300"], ["method.beta_fast=0.5"],
                                  ["method.factor=null", "method.target_ctx=4000000000"],
                                  ["method.factor=null"], ["parity.max_abs_logit=.inf"]],
                         ids=lambda sets: ",".join(sets))
def test_recipe_check_refuses_what_run_refuses(tmp_path, base, capsys, sets):
    recipe = write_recipe(tmp_path / "r.yaml", base, out="out")
    overrides = [arg for s in sets for arg in ("--set", s)]
    run_line = one_line(*cli(capsys, "recipe", "run", recipe, *overrides, "-q"))
    rc, err = cli(capsys, "recipe", "check", recipe, *overrides)
    assert rc == 2 and err.splitlines()[0] == run_line, (err, run_line)
    assert sorted(listing(tmp_path)) == ["base", "r.yaml"]
