"""`ropeconv verify OUT --runtime mlx`: a safetensors output loaded by mlx-lm as it is (mlx_lm.load reads a
transformers folder) and proven against the reference; the folder with its scaling stripped fails; a cell mlx-lm
misreads (the mlx format's own refusals) is refused in one line before anything runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import (
    ORIGINAL_CTX,
    add_byte_level_tokenizer,
    assert_refused,
    listing,
    make_tiny,
    read_json,
    run_cli,
)

pytest.importorskip("mlx_lm")

TOKENS = str(3 * ORIGINAL_CTX)  # crosses the original context


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return add_byte_level_tokenizer(make_tiny(tmp_path_factory.mktemp("mlx-runtime"), "llama"))


def extend(base: Path, out: Path, method: str) -> Path:
    assert run_cli("extend", base, "--method", method, "--factor", "4", "-o", out, "--tokens", TOKENS, "-q") == 0
    return out


def verify_json(capsys, out: Path, *more: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = run_cli("verify", out, "--runtime", "mlx", "--tokens", TOKENS, "--json", "-q", *more)
    return rc, json.loads(capsys.readouterr().out)


def test_a_correct_output_passes_in_mlx_lm_and_fails_once_its_scaling_is_stripped(llama, tmp_path, capsys):
    out = extend(llama, tmp_path / "out", "yarn")
    rc, report = verify_json(capsys, out)
    assert rc == 0 and report["passed"] is True and report["runtime"] == "mlx-lm"
    assert report["last_position"] >= ORIGINAL_CTX and report["max_abs_logit"] < 1e-2

    stripped = tmp_path / "stripped"
    shutil.copytree(out, stripped)
    config = read_json(stripped / "config.json")
    config.pop("rope_scaling", None)
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": config["rope_parameters"]["rope_theta"]}
    (stripped / "config.json").write_text(json.dumps(config))
    rc, report = verify_json(capsys, stripped)
    assert rc == 1 and report["passed"] is False and report["max_abs_logit"] > 1e-2


def test_both_runtimes_in_one_call(llama, tmp_path, capsys):
    out = extend(llama, tmp_path / "out", "linear")
    rc, reports = verify_json(capsys, out, "--runtime", "own")
    assert rc == 0 and [r["runtime"] for r in reports] == ["transformers", "mlx-lm"]


@pytest.mark.parametrize(("family", "args", "why"), [
    ("gpt_neox", ["--method", "yarn", "--factor", "4"], "builds a plain nn.RoPE"),
    ("llama", ["--method", "yarn", "--factor", "4", "--attention-factor", "1.5"], "ignores attention_factor"),
])
def test_a_cell_mlx_lm_misreads_is_refused_before_anything_runs(family, args, why, tmp_path, capsys):
    """The mlx format's own refusals (mlx_export.capability), read from the folder's config.json."""
    base = add_byte_level_tokenizer(make_tiny(tmp_path / "base", family))
    out = tmp_path / "out"
    assert run_cli("extend", base, *args, "-o", out, "--no-verify", "-q") == 0
    before = listing(out)
    capsys.readouterr()
    rc = run_cli("verify", out, "--runtime", "mlx", "--tokens", TOKENS, "-q")
    assert_refused(capsys, rc, out, listing(tmp_path), mentions=("refused for mlx-lm", why))
    assert listing(out) == before
