"""Helpers and fixtures shared by the hostile-input tests (tests/hostile/): the refusal contracts, the output
and base snapshots, hand-edited safetensors headers and configs, watchdogs for FIFOs, mounts and `chattr`, and
the forked fuzz worker (fuzz_worker.py, beside this file).

The contract for every refusal: exit 2, exactly one `ropeconv: error:` line on stderr, no traceback, nothing left
beside the target (tests.conftest.assert_refused), and every file of the base and of a previous output
byte-identical. Commands that write nothing (inspect, verify) are held to refused_in_place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import (
    add_byte_level_tokenizer,
    assert_refused,
    read_json,
    run_cli,
)
from tests.test_interrupt import ropeconv_cmd


def extend(base: Path, out: Path, *args: str) -> int:
    return run_cli("extend", base, *args, "-o", out)


def edit_config(base: Path, **changes) -> None:
    cfg = read_json(base / "config.json")
    cfg.update(changes)
    (base / "config.json").write_text(json.dumps(cfg, indent=2))


def first_2d_tensor(header: dict) -> str:
    return next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2)


def to_pickle(base: Path) -> dict[str, torch.Tensor]:
    state = load_file(base / "model.safetensors")
    torch.save(state, base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    return state


HERE = Path(__file__).parent


def extend_yarn(base: Path, out: Path, *args: str) -> int:
    return run_cli("extend", base, "--method", "yarn", "--factor", "2", *args, "-o", out)


def header_of(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_header(path: Path, header_text: bytes, data: bytes, length: int | None = None) -> None:
    header_text += b" " * (-len(header_text) % 8)
    path.write_bytes(struct.pack("<Q", len(header_text) if length is None else length) + header_text + data)


def rewrite_header(path: Path, edit) -> None:
    header, data = header_of(path)
    ranges = {name: tuple(info["data_offsets"]) for name, info in header.items() if name != "__metadata__"}
    edit(header)
    # a tensor dropped from the header takes its bytes with it (a hole is refused, as safetensors refuses it)
    for begin, end in sorted((r for n, r in ranges.items() if n not in header and r not in
                              [tuple(v.get("data_offsets", ())) for v in header.values() if isinstance(v, dict)]),
                             reverse=True):
        data = data[:begin] + data[end:]
        for info in header.values():
            if isinstance(info, dict) and "data_offsets" in info and info["data_offsets"][0] >= end:
                info["data_offsets"] = [o - (end - begin) for o in info["data_offsets"]]
    write_header(path, json.dumps(header, separators=(",", ":")).encode(), data)


def refused_in_place(capsys, rc: int, *mentions: str) -> str:
    """The contract for commands that write nothing (inspect, verify)."""
    err = capsys.readouterr().err
    assert rc == 2, f"exit {rc}; stderr:\n{err}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: "), err
    for word in mentions:
        assert word.lower() in lines[0].lower(), lines[0]
    print("REFUSED:", lines[0])
    return lines[0]


@contextlib.contextmanager
def no_hang(*fifos: Path, seconds: int = 60):
    """Fail instead of blocking the suite when the code under test waits on a FIFO: after `seconds`, each FIFO
    is opened for writing and closed (a reader blocked in open() or read() then sees end of file, even inside
    a C library that retries interrupted calls), and the test fails."""
    blocked = threading.Event()

    def release():
        blocked.set()
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    timer = threading.Timer(seconds, release)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    assert not blocked.is_set(), f"blocked on {', '.join(map(str, fifos))} for {seconds} s"


def deep(n: int) -> str:
    return "[" * n + "1" + "]" * n


ALARM_S = 30  # a read that blocks (a FIFO opened for reading) fails the test instead of hanging it


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


def fuzz(mode: str, base: Path, seed: int, cases: int) -> dict:
    proc = subprocess.run([sys.executable, str(HERE / "fuzz_worker.py"), mode, str(base), "--seed", str(seed),
                           "--cases", str(cases)], capture_output=True, text=True, timeout=600)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert results and results[-1].get("summary"), f"the worker died:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    summary = results[-1]
    failures = [r for r in results[:-1] if r["status"] != "ok"]
    for r in failures:
        print(f"FAILED seed {r['seed']} mutant {r['index']} ({r['mutation']}): {r['error']}\n{r.get('traceback', '')}\n"
              f"  replay: python tests/hostile/fuzz_worker.py {mode} {base} --seed {r['seed']} --only {r['index']}")
    refusals = sorted({str(v).split(": ", 1)[-1][:60] for r in results[:-1] if r["status"] == "ok"
                       for v in r["outcome"].values() if str(v).startswith("refused")})
    print(json.dumps(summary), f"\n{len(refusals)} distinct refusal openings, e.g.", *refusals[:8], sep="\n  ")
    assert not failures, f"{len(failures)} of {summary['cases']} mutants escaped (seed {seed}): " + \
        ", ".join(f"#{r['index']} {r['error'][:80]}" for r in failures[:5])
    assert summary["cases"] == cases and proc.returncode == 0, proc.stderr[-2000:]
    # the fuzz must reach both outcomes, or it exercises nothing
    assert summary["refused"] >= cases // 4 and summary["accepted"] >= 5, summary
    return summary


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def refused(capsys, rc: int, base: Path, before: dict[str, bytes], out: Path, parent: list[str], *mentions: str) -> str:
    line = assert_refused(capsys, rc, out, parent, mentions=mentions)
    assert snapshot(base) == before, "a base file changed"
    return line


def error_line(exc: pytest.ExceptionInfo, *mentions: str) -> str:
    text = str(exc.value)
    assert "\n" not in text and text, text
    for word in mentions:
        assert word.lower() in text.lower(), text
    return text


@pytest.fixture(scope="module")
def made(tiny_llama, tmp_path_factory) -> Path:
    """A safetensors output of the session's tiny llama with a byte-level tokenizer, made once: read only."""
    root = tmp_path_factory.mktemp("hostile-manifest")
    base = add_byte_level_tokenizer(Path(shutil.copytree(tiny_llama, root / "base")))
    assert run_cli("extend", base, "--method", "yarn", "--factor", "2", "--no-verify", "-q", "-o", root / "out") == 0
    return root / "out"


@pytest.fixture
def output(made, tmp_path) -> Path:
    """A private copy of the output, alone in its folder (so "nothing beside it" is checkable)."""
    return Path(shutil.copytree(made, tmp_path / "outputs" / "extended"))


def tree(root: Path) -> dict[str, str]:
    """Every entry under root: its sha256, or what it is."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        found[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() \
            else ("link" if path.is_symlink() else "dir")
    return found
