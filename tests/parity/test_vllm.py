"""`ropeconv verify OUT --runtime vllm`: safetensors outputs proven in vLLM's offline engine (float32, CPU).

vLLM lives in its own environment (`make vllm` builds .venv-vllm; ROPECONV_VLLM_PYTHON names another): the tests
that run it skip without it when run by hand, and fail under `make test` (ROPECONV_REQUIRE_VLLM). Each model vLLM
loads costs 20–60 s on 2 cores, so the proving cells run in one start of the environment (verify_in_vllm takes
several outputs); the refusals run nothing. vLLM's CPU attention takes head_dim ≥ 32 (16, the tiny default, is
refused), hence the wider tiny models here. ROPECONV_ALL_CELLS=1 adds the ntk and none cells to the llama batch,
and a yarn output whose attention factor is dropped (it must fail).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ropeconv.methods.base import Support
from ropeconv.parity import vllm
from tests.conftest import make_tiny, read_json, run_cli

VLLM_PYTHON = vllm.python()
HD32 = dict(hidden_size=128, head_dim=32, num_attention_heads=4, num_key_value_heads=2)
ALL_CELLS = os.environ.get("ROPECONV_ALL_CELLS") == "1"
METHODS = ("yarn", "linear", "llama3") + (("ntk", "none") if ALL_CELLS else ())
DOC = Path(__file__).resolve().parents[2] / "docs" / "parity-and-scale.md"


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    if VLLM_PYTHON is None:
        if os.environ.get("ROPECONV_REQUIRE_VLLM"):
            pytest.fail("the vLLM environment is missing (ROPECONV_REQUIRE_VLLM is set, as by `make test`); "
                        "`make vllm` builds .venv-vllm")
        pytest.skip("no vLLM environment: `make vllm` builds .venv-vllm (or set ROPECONV_VLLM_PYTHON)")
    return VLLM_PYTHON


@pytest.fixture
def in_vllm(vllm_python, monkeypatch) -> Path:
    monkeypatch.setenv(vllm.ENV, str(vllm_python))
    return vllm_python


def extend(base: Path, out: Path, method: str, *extra) -> Path:
    factor = () if method == "none" else ("--factor", "4")
    assert run_cli("extend", base, "--method", method, *factor, *extra, "--no-verify", "-q", "-o", out) == 0
    return out


def strip_scaling(out: Path, to: Path) -> Path:
    """A copy of an output whose config.json no longer declares its rope scaling (the base's rope, unscaled)."""
    shutil.copytree(out, to)
    config = read_json(to / "config.json")
    config.pop("rope_scaling", None)
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": config.get("rope_theta", 10000.0)}
    (to / "config.json").write_text(json.dumps(config))
    return to


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("vllm-base"), "llama", name="tiny-llama-hd32", **HD32)


@pytest.fixture(scope="module")
def llama_outputs(llama_base, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm-outputs")
    return {m: extend(llama_base, root / m, m) for m in METHODS}


@pytest.fixture(scope="module")
def gpt2_absolute(tmp_path_factory) -> Path:
    """The learned-table cell: a tiny gpt2 (head_dim 32) with its position table resampled ×4."""
    root = tmp_path_factory.mktemp("vllm-gpt2")
    return extend(make_tiny(root, "gpt2", name="tiny-gpt2-hd32", n_embd=128, n_head=4), root / "out", "absolute")


def test_each_claimed_cell_matches_transformers_in_vllm(llama_outputs, gpt2_absolute, in_vllm):
    """The llama cells (yarn, linear, llama3) and gpt2's resampled table in one start of vLLM: within the tolerance
    past the original context, every top-1 token the same, and what vLLM applied is the method's own rotary class
    and factor. (qwen2 runs by itself, through the CLI, below: loaded after llama models in one vLLM 0.32 process
    its engine stalled, twice, on this machine.)"""
    cells = {**llama_outputs, "absolute": gpt2_absolute}
    reports = vllm.verify_in_vllm(list(cells.values()))
    expected = {"yarn": "YaRNScalingRotaryEmbedding", "linear": "LinearScalingRotaryEmbedding",
                "llama3": "Llama3RotaryEmbedding", "ntk": "RotaryEmbedding", "none": "RotaryEmbedding",
                "absolute": None}
    figures = {}
    for method, report in zip(cells, reports):
        figures[method] = report.max_abs_logprob
        assert report.passed, report.format()
        # none: the target is the original context, so the probe stays within it
        assert [b.name for b in report.bands] == (["within"] if method == "none" else ["within", "beyond"])
        assert report.bands[-1].first_position == (0 if method == "none" else 64) and report.top1 == 1.0
        assert report.applied["class"] == expected[method], report.applied
        if method in ("yarn", "llama3"):
            assert report.applied["scaling_factor"] == 4.0
        if method == "yarn":  # the attention factor vLLM multiplies cos/sin by: YaRN's 0.1·ln 4 + 1
            assert report.applied["mscale"] == pytest.approx(1.1386294, abs=1e-6)
    print("vLLM max |Δ log p| per cell:", figures)


@pytest.mark.long  # one more vLLM start (~40 s): `make test-long`
def test_a_dropped_yarn_attention_factor_fails_in_vllm(llama_outputs, in_vllm, tmp_path):
    """The yarn output with attention_factor 1.0 written into its config (the temperature dropped): vLLM applies
    it (mscale 1.0), and the check finds the difference."""
    dropped = tmp_path / "af-dropped"
    shutil.copytree(llama_outputs["yarn"], dropped)
    config = read_json(dropped / "config.json")
    for key in ("rope_scaling", "rope_parameters"):
        config[key]["attention_factor"] = 1.0
    (dropped / "config.json").write_text(json.dumps(config))
    [report] = vllm.verify_in_vllm([dropped])
    assert report.applied["mscale"] == 1.0 and not report.passed, report.format()
    assert report.max_abs_logprob > 100 * vllm.MAX_ABS_LOGPROB and report.changed
    print("yarn, attention factor dropped: max |Δ log p|", report.max_abs_logprob)


def test_stripped_scaling_fails_in_vllm(llama_outputs, in_vllm, tmp_path):
    """The yarn output with its scaling removed from config.json: vLLM runs the base's rope, which the check
    catches (exit 1, the figure far beyond the tolerance) — the check can fail. The manifest's hash of config.json
    no longer matches either, told after the proof."""
    stripped = strip_scaling(llama_outputs["yarn"], tmp_path / "stripped")
    rc, out, err = run_cli_capture("verify", stripped, "--runtime", "vllm", "--json", "-q")
    assert rc == 1, err
    report = json.loads(out)
    assert not report["passed"] and report["max_abs_logprob"] > 1.0, report
    assert report["applied"]["class"] == "RotaryEmbedding"
    assert "vLLM parity failed" in err and "config.json" in err
    print("stripped yarn: max |Δ log p|", report["max_abs_logprob"], "top-1", report["top1"])


def test_qwen2_yarn_passes_through_the_cli(tmp_path, in_vllm):
    """A second RoPE family (qwen2: q/k/v biases), through the command line: exit 0 and the report names what vLLM
    applied."""
    base = make_tiny(tmp_path, "qwen2", name="tiny-qwen2-hd32", **HD32)
    out = extend(base, tmp_path / "out", "yarn")
    rc, stdout, err = run_cli_capture("verify", out, "--runtime", "vllm", "-q")
    assert rc == 0, err
    assert stdout.startswith("parity PASSED: vLLM on cpu") and "ran: vLLM " in stdout, stdout
    assert "YaRNScalingRotaryEmbedding scaling_factor=4" in stdout, stdout
    print(stdout)


@pytest.mark.parametrize("method", ["dynamic", "longrope"])
def test_cells_vllm_reads_wrongly_are_refused_in_one_line(method, llama_base, tmp_path, monkeypatch):
    """Refused before anything loads (no vLLM environment needed): exit 2, one line with the reason."""
    monkeypatch.setenv(vllm.ENV, "off")
    extra: tuple = ()
    if method == "longrope":
        factors = tmp_path / "factors.json"
        factors.write_text(json.dumps({"short_factor": [1.0] * 16, "long_factor": [4.0] * 16}))
        extra = ("--factors", factors)
    out = extend(llama_base, tmp_path / "out", method, *extra)
    rc, stdout, err = run_cli_capture("verify", out, "--runtime", "vllm")
    assert rc == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"refused for vLLM: {method}: " in lines[0], err
    assert {"dynamic": "NaN", "longrope": "long factors"}[method] in lines[0]


def test_small_head_dim_is_refused_with_the_sizes_vllm_takes(tmp_path, monkeypatch):
    monkeypatch.setenv(vllm.ENV, "off")
    out = extend(make_tiny(tmp_path, "llama"), tmp_path / "out", "yarn")  # head_dim 16
    rc, _, err = run_cli_capture("verify", out, "--runtime", "vllm")
    assert rc == 2 and "head_dim 16" in err and "32, 64" in err, err


def test_missing_environment_is_told_with_make_vllm(llama_base, tmp_path, monkeypatch):
    monkeypatch.setenv(vllm.ENV, "off")
    out = extend(llama_base, tmp_path / "out", "yarn")
    rc, _, err = run_cli_capture("verify", out, "--runtime", "vllm")
    assert rc == 2 and "make vllm" in err, err


def test_cells_cover_every_method_and_the_docs_hold_the_table():
    """One record per method ropeconv has; the docs' table is generated from those records."""
    from ropeconv import methods

    assert {c.method for c in vllm.CELLS} == {m.NAME for m in methods.ordered()}
    assert {c.method for c in vllm.CELLS if c.support is Support.REFUSED} >= {"dynamic", "longrope", "alibi"}
    assert vllm.doc_table() in DOC.read_text(encoding="utf-8"), "regenerate the table: vllm.doc_table()"


def test_a_wrong_figure_fails_the_judge():
    """judge() on numbers alone: a row off by more than the tolerance, or a NaN, fails."""
    import torch

    ids = [1, 5, 7, 9, 11, 13]
    logp = torch.log_softmax(torch.randn(len(ids), 16, generator=torch.Generator().manual_seed(0)).double(), -1)
    exact = [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
    top1 = [int(logp[i].argmax()) for i in range(len(ids) - 1)]

    def report(values):
        return vllm.judge("m", logp, ids, vllm.Result(values, top1, {"class": None}, 7), 3, ("vLLM test",))

    assert report(exact).passed
    assert not report(exact[:-1] + [exact[-1] + 2 * vllm.MAX_ABS_LOGPROB]).passed
    assert not report(exact[:-1] + [float("nan")]).passed


def run_cli_capture(*args) -> tuple[int, str, str]:
    import contextlib
    import io

    from ropeconv.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()
