"""Hostile --factors files (freqs, longrope): values that are not finite positive numbers, out of range, of the
wrong length or shape, not UTF-8, not JSON, nested without bound or missing — each refused in one line before
the first byte; the same file without the bad value converts.

The contract for every refusal: exit 2, exactly one `ropeconv: error:` line on stderr, no traceback, nothing
left beside the target (tests.conftest.assert_refused), and every file of the base byte-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ropeconv.checkpoint import load_checkpoint
from ropeconv.errors import InputError
from ropeconv.methods import freqs
from tests.conftest import (
    assert_refused,
    listing,
    run_cli,
)
from tests.hostile.conftest import error_line, extend, refused, snapshot

N_PAIRS = 8  # tiny llama: head_dim 16, full rotary -> 8 frequency pairs


# ----------------------------------------------------------------------------- factor files

GOOD = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.0]


BAD_VALUES = {"negative": "-2.0", "zero": "0", "nan_literal": "NaN", "infinity_literal": "Infinity",
              "overflow_to_inf": "1e999", "string": '"2.0"', "null": "null", "bool": "true"}  # fmt: skip


def _json_list(values: list[str]) -> str:
    return "[" + ", ".join(values) + "]"


def _with_bad(bad: str, at: int = 3) -> str:
    values = [repr(v) for v in GOOD]
    values[at] = bad
    return _json_list(values)


@pytest.mark.parametrize("bad", list(BAD_VALUES), ids=list(BAD_VALUES))
def test_freqs_factor_file_bad_value(capsys, base, out, tmp_path, bad):
    factors = tmp_path / "factors.json"
    factors.write_text(_with_bad(BAD_VALUES[bad]))
    before = listing(out.parent)
    rc = extend(base, out, "--method", "freqs", "--factors", factors, "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factors",))


@pytest.mark.parametrize("which", ["short_factor", "long_factor"])
@pytest.mark.parametrize("bad", list(BAD_VALUES), ids=list(BAD_VALUES))
def test_longrope_factor_file_bad_value(capsys, base, out, tmp_path, bad, which):
    good = _json_list([repr(v) for v in GOOD])
    sets = {"short_factor": good, "long_factor": good}
    sets[which] = _with_bad(BAD_VALUES[bad])
    factors = tmp_path / "factors.json"
    factors.write_text("{" + ", ".join(f'"{k}": {v}' for k, v in sets.items()) + "}")
    before = listing(out.parent)
    rc = extend(base, out, "--method", "longrope", "--factors", factors, "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factors",))


@pytest.mark.parametrize("n", [0, N_PAIRS - 1, N_PAIRS + 1, 2 * N_PAIRS])
@pytest.mark.parametrize("method", ["freqs", "longrope"])
def test_factor_list_wrong_length(capsys, base, out, tmp_path, method, n):
    values = [2.0] * n
    factors = tmp_path / "factors.json"
    body = values if method == "freqs" else {"short_factor": [1.0] * N_PAIRS, "long_factor": values}
    factors.write_text(json.dumps(body))
    before = listing(out.parent)
    rc = extend(base, out, "--method", method, "--factors", factors, "--factor", "4", "--no-verify")
    line = assert_refused(capsys, rc, out, before, mentions=("--factors",))
    assert str(N_PAIRS) in line


@pytest.mark.parametrize("method", ["freqs", "longrope"])
@pytest.mark.parametrize("problem", ["missing_file", "not_json", "wrong_shape", "no_flag"])
def test_factor_file_unusable(capsys, base, out, tmp_path, method, problem):
    factors = tmp_path / "factors.json"
    if problem == "not_json":
        factors.write_text("[1.0, 2.0,")
    elif problem == "wrong_shape":
        factors.write_text(json.dumps({"something": [1.0] * N_PAIRS}))
    args = [] if problem == "no_flag" else ["--factors", factors]
    before = listing(out.parent)
    rc = extend(base, out, "--method", method, *args, "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factors",))


def test_freqs_good_factor_file_is_accepted(capsys, base, out, tmp_path):
    """Control: the same file without the bad value converts (so the refusals above are about the value)."""
    factors = tmp_path / "factors.json"
    factors.write_text(_json_list([repr(v) for v in GOOD]))
    assert extend(base, out, "--method", "freqs", "--factors", factors, "--factor", "4", "--no-verify", "-q") == 0
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("method", ["freqs", "longrope"])
def test_factor_file_not_utf8(capsys, base, out, tmp_path, method):
    factors = tmp_path / "factors.json"
    factors.write_bytes(b"\xff\xfe[1.0]")
    before = listing(out.parent)
    rc = extend(base, out, "--method", method, "--factors", factors, "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factors",))


# ----------------------------------------------------------------------------- 4: --factors files


def _n_pairs(base: Path) -> int:
    return load_checkpoint(base).scheme.n_pairs


@pytest.mark.parametrize("value", [5e-324, 1e-300, 1e300, 10**400], ids=["denormal", "tiny", "huge", "huge-int"])
def test_factor_out_of_range_refused(tiny_llama, tmp_path, value):
    n = _n_pairs(tiny_llama)
    path = tmp_path / "factors.json"
    path.write_text("[" + ", ".join(["1.0"] * (n - 1) + [repr(value)]) + "]")
    with pytest.raises(InputError) as exc:
        freqs.read_factors(path, n)
    error_line(exc, f"[{n - 1}]", "outside")


@pytest.mark.parametrize("case", ["denormal", "nested-100k"])
def test_bad_factors_file_refused_by_extend(capsys, base, out, tmp_path, case):
    """Before: a 5e-324 entry gave NaN past the original context (published under --no-verify); a file nested
    100k deep ended in a RecursionError traceback."""
    path = tmp_path / "factors.json"
    if case == "denormal":
        path.write_text(json.dumps([1.0] * (_n_pairs(base) - 1) + [5e-324]))
    else:
        path.write_text('{"factors": ' + "[" * 100_000 + "]" * 100_000 + "}")
    before, parent = snapshot(base), listing(out.parent)
    rc = run_cli("extend", base, "--method", "freqs", "--factors", path, "--factor", "2", "--no-verify", "-q", "-o", out)
    refused(capsys, rc, base, before, out, parent, "outside [2^-10, 2^20]" if case == "denormal" else "nested more than")
