"""Hostile command-line values: factors and target lengths no method can take, options that do not apply to the
method, values of the wrong kind, sizes bounded at 1 EiB, NUL bytes and link loops in paths, missing or wrong
paths given to extend, verify and inspect — each one line, in process and in a real process; a failed parity
is exit 1, never 2, and publishes nothing.

The contract for every refusal: exit 2, exactly one `ropeconv: error:` line on stderr, no traceback, nothing left
beside the target, the base untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ropeconv.errors import InputError
from ropeconv.sizes import MAX_BYTES, parse_bytes
from tests.conftest import (
    ORIGINAL_CTX,
    assert_refused,
    listing,
    read_json,
    run_cli,
)
from tests.hostile.conftest import extend, refused_in_place, to_pickle, tree


def test_base_not_found(capsys, tmp_path, out):
    before = listing(out.parent)
    rc = extend(tmp_path / "nope", out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("nope",))


# ----------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("factor", ["1", "0.5", "nan", "inf", "0", "-2"])
def test_bad_factor(capsys, base, out, factor):
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", f"--factor={factor}", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factor",))


@pytest.mark.parametrize("target", [ORIGINAL_CTX, ORIGINAL_CTX // 2, 1, 0, -128])
def test_target_ctx_not_above_original(capsys, base, out, target):
    before = listing(out.parent)
    rc = extend(base, out, "--method", "linear", f"--target-ctx={target}", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--target-ctx",))


def test_both_factor_and_target_ctx(capsys, base, out):
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--target-ctx", "256", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factor", "--target-ctx"))


def test_neither_factor_nor_target_ctx(capsys, base, out):
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factor", "--target-ctx"))


@pytest.mark.parametrize(
    "method, args, flag",
    [
        ("linear", ["--beta-fast", "16"], "--beta-fast"),
        ("linear", ["--attention-factor", "1.5"], "--attention-factor"),
        ("ntk", ["--factors", "factors.json"], "--factors"),
    ],
)
def test_option_that_does_not_apply(capsys, base, out, method, args, flag):
    before = listing(out.parent)
    rc = extend(base, out, "--method", method, "--factor", "4", *args, "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=(flag, method))


@pytest.mark.parametrize(
    "args, mentions",
    [
        (["--method", "nosuch", "--factor", "4"], ("--method",)),
        (["--method", "yarn", "--factor", "four"], ("--factor",)),
        (["--method", "yarn", "--factor", "4", "--to", "pickle"], ("--to",)),
        (["--method", "yarn", "--factor", "4", "--max-shard-size", "lots"], ("--max-shard-size",)),
        (["--method", "yarn", "--factor", "4", "--tokens", "1"], ("--tokens",)),
        (["--method", "yarn", "--factor", "4", "--max-abs-logit", "nan"], ("--max-abs-logit",)),
        (["--method", "yarn", "--factor", "4", "--beta-fast", "1", "--beta-slow", "2"], ("--beta-fast",)),
        (["--method", "yarn", "--factor", "4", "--attention-factor=-1"], ("--attention-factor",)),
        (["--method", "yarn", "--factor", "4", "--no-such-flag"], ("--no-such-flag",)),
    ],
    ids=["unknown-method", "factor-not-a-number", "unknown-format", "bad-shard-size", "tokens-1",
         "max-abs-logit-nan", "beta-fast-below-slow", "negative-attention-factor", "unknown-flag"],
)
def test_bad_option_values(capsys, base, out, args, mentions):
    before = listing(out.parent)
    rc = extend(base, out, *args, "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=mentions)


def test_missing_out_option(capsys, base):
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--no-verify")
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: ") and "--out" in lines[0], captured.err


def test_verify_missing_path(capsys, tmp_path):
    refused_in_place(capsys, run_cli("verify", tmp_path / "nope", "-q"), "nope")


def test_verify_file_not_dir(capsys, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    refused_in_place(capsys, run_cli("verify", f, "-q"), "file.txt")


def test_verify_base_not_a_directory(capsys, base, out, tmp_path):
    assert extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify", "-q") == 0
    capsys.readouterr()
    refused_in_place(capsys, run_cli("verify", out, "--base", tmp_path / "nope", "-q"), "--base")


def test_inspect_missing_path(capsys, tmp_path):
    refused_in_place(capsys, run_cli("inspect", tmp_path / "nope"), "nope")


def test_inspect_dir_without_config(capsys, tmp_path):
    refused_in_place(capsys, run_cli("inspect", tmp_path), "config.json")


def test_refusals_never_touch_the_base(capsys, base, out):
    """Across several refusals the base directory stays byte-identical."""
    before = tree(base)
    for args in (["--factor", "1"], ["--target-ctx", "8"], ["--factor", "4", "--beta-fast", "nan"]):
        assert extend(base, out, "--method", "yarn", *args, "--no-verify") == 2
    capsys.readouterr()
    assert tree(base) == before


# ----------------------------------------------------------------------------- the real process


@pytest.mark.parametrize("case", ["truncated", "pickle", "exists"])
def test_real_process_stderr_is_one_line(base, out, case):
    """Out of process too (imports, warnings and logging included): exit 2 and one stderr line."""
    import subprocess
    import sys

    args = ["--method", "yarn", "--factor", "4", "--no-verify"]
    if case == "truncated":
        weights = base / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif case == "pickle":
        to_pickle(base)
    else:
        out.mkdir()
    before = listing(out.parent)
    script = Path(sys.executable).with_name("ropeconv")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "ropeconv.cli.main"]
    proc = subprocess.run(cmd + ["extend", str(base), *args, "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: "), proc.stderr
    assert proc.stdout == ""
    assert listing(out.parent) == before


# ----------------------------------------------------------------------------- parity failure is exit 1, not 2


def test_extend_parity_failure_is_exit_1_and_publishes_nothing(capsys, base, out):
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--max-abs-logit", "1e-30", "--device", "cpu", "-q")
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: parity failed"), captured.err
    assert listing(out.parent) == before


def test_verify_parity_failure_is_exit_1(capsys, base, out):
    assert extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify", "-q") == 0
    cfg = read_json(out / "config.json")  # tamper: the artifact now declares a different rope than its manifest
    for key in ("rope_parameters", "rope_scaling"):
        if cfg.get(key):
            cfg[key]["factor"] = 8.0
    (out / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    rc = run_cli("verify", out, "-q", "--device", "cpu")
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: parity failed"), captured.err


def test_absurd_factor_is_refused(capsys, base, out):
    before = listing(out.parent)
    rc = extend(base, out, "--method", "linear", "--factor", "1e300", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factor",))


# ----------------------------------------------------------------------------- command-line values


def test_sizes_are_bounded_at_one_exbibyte():
    assert parse_bytes("--max-shard-size", "1048576TiB") == MAX_BYTES == 2**60
    for text in ("1048577TiB", "9" * 400 + "GiB", "9" * 400 + "." + "9" * 400 + "GB"):
        with pytest.raises(InputError, match="1 EiB"):
            parse_bytes("--max-shard-size", text)


def test_max_memory_of_400_nines_is_one_line(capsys, output):
    before = tree(output)
    capsys.readouterr()
    rc = run_cli("verify", output, "-q", "--max-memory", "cpu=" + "9" * 400 + "GiB")
    assert_refused(capsys, rc, output, listing(output.parent), mentions=("--max-memory", "1 EiB"))
    assert tree(output) == before


@pytest.mark.parametrize("case", ["-o-NUL", "base-NUL", "base-a-link-loop", "max-shard-size-400-nines"])
def test_extend_values_no_run_could_take_are_one_line(capsys, tiny_llama, tmp_path, case):
    target = tmp_path / "out"
    base, extra, mention = tiny_llama, [], case.split("-")[0]
    if case == "-o-NUL":
        target, mention = tmp_path / "o\0ut", "-o"
    elif case == "base-NUL":
        base = Path(f"{tiny_llama}\0x")
    elif case == "base-a-link-loop":
        base = tmp_path / "loop"
        base.symlink_to(base)
    else:
        extra, mention = ["--max-shard-size", "9" * 400 + "GiB"], "--max-shard-size"
    before = tree(tiny_llama)
    capsys.readouterr()
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "2", "--no-verify", "-q", *extra, "-o", target)
    assert_refused(capsys, rc, tmp_path / "out", listing(tmp_path), mentions=(mention,))
    assert tree(tiny_llama) == before
