"""`ropeconv verify OUT --runtime vllm`: safetensors outputs proven in vLLM's offline engine (float32, CPU).

vLLM lives in its own environment (`make vllm` builds .venv-vllm; ROPECONV_VLLM_PYTHON names another): the tests
that run it skip without it when run by hand, and fail under `make test` (ROPECONV_REQUIRE_VLLM). Each model vLLM
loads costs 20–60 s on 2 cores, so the proving cells run in one start of the environment (verify_in_vllm takes
several outputs); the refusals run nothing. vLLM's CPU attention takes head_dim ≥ 32 (16, the tiny default, is
refused), hence the wider tiny models here. ROPECONV_ALL_CELLS=1 adds the ntk and none cells to the llama batch,
and every vLLM cell of mistral, qwen3, phi3 and gemma, each also stripped and yarn's attention factor dropped (they
must fail), one vLLM process per family.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ropeconv.methods.base import Support
from ropeconv.parity import vllm
from tests.conftest import make_tiny, read_json, run_cli, temp_sockets

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


def strip_scaling(out: Path, to: Path, theta: float | None = None) -> Path:
    """A copy of an output whose config.json no longer declares its rope scaling (the base's rope, unscaled; theta:
    the base's rope_theta, which ntk's output replaces)."""
    shutil.copytree(out, to)
    config = read_json(to / "config.json")
    config.pop("rope_scaling", None)
    theta = theta if theta is not None else config.get("rope_theta", 10000.0)
    config["rope_theta"] = theta
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    (to / "config.json").write_text(json.dumps(config))
    return to


def drop_attention_factor(out: Path, to: Path) -> Path:
    """A copy of a yarn output with attention_factor 1.0 written into its config (the temperature dropped)."""
    shutil.copytree(out, to)
    config = read_json(to / "config.json")
    for key in ("rope_scaling", "rope_parameters"):
        config[key]["attention_factor"] = 1.0
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


@pytest.fixture(scope="module")
def family_outputs(tmp_path_factory) -> dict[str, Path]:
    """The default run's cells of more families: the first vLLM method of each of DEFAULT_FAMILIES, and the last of
    them also with its scaling stripped (it must fail)."""
    root = tmp_path_factory.mktemp("vllm-families")
    outs: dict[str, Path] = {}
    for family in DEFAULT_FAMILIES:
        base = make_tiny(root, family, name=f"tiny-{family}-hd32", **HD32)
        method = family_methods(family)[0]
        outs[f"{family} {method}"] = extend(base, root / f"{family}-{method}", method)
    theta = read_json(base / "config.json").get("rope_theta", 10000.0)
    outs[f"{family} {method} stripped"] = strip_scaling(outs[f"{family} {method}"], root / "stripped", theta)
    return outs


def test_each_claimed_cell_matches_transformers_in_vllm(llama_outputs, gpt2_absolute, family_outputs, in_vllm):
    """The llama cells (yarn, linear, llama3), gpt2's resampled table, and one cell of each of DEFAULT_FAMILIES (qwen3,
    gemma: yarn; gemma's also stripped, which must fail) in one start of vLLM: within the tolerance past the original
    context, every top-1 token the same, and what vLLM applied is the method's own rotary class and factor. (qwen2 runs by itself, through extend --verify-in, below. A "stall" seen once with several models in
    one process was the runner blocked writing vLLM's stdout logs into a full pipe; vllm._run drains it now.)"""
    cells = {**llama_outputs, "absolute": gpt2_absolute, **family_outputs}
    sockets = temp_sockets()
    reports = vllm.verify_in_vllm(list(cells.values()))
    assert temp_sockets() <= sockets, "vLLM's IPC sockets were left in the system temp folder"
    expected = {"yarn": "YaRNScalingRotaryEmbedding", "linear": "LinearScalingRotaryEmbedding",
                "llama3": "Llama3RotaryEmbedding", "ntk": "RotaryEmbedding", "none": "RotaryEmbedding",
                "absolute": None}
    figures = {}
    for name, report in zip(cells, reports):
        figures[name] = report.max_abs_logprob
        if name.endswith(" stripped"):  # another family's cell, its scaling removed: the check fails
            assert not report.passed and report.max_abs_logprob > 100 * vllm.MAX_ABS_LOGPROB, report.format()
            assert report.applied["class"] == "RotaryEmbedding"
            continue
        method = name.split()[-1]
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
    dropped = drop_attention_factor(llama_outputs["yarn"], tmp_path / "af-dropped")
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


def test_extend_verify_in_vllm_proves_qwen2_before_publishing(tmp_path, in_vllm):
    """A second RoPE family (qwen2: q/k/v biases) through `extend --verify-in vllm`: after the own runtimes' parity
    the staged folder runs in vLLM, the report is shown, and the manifest's parity section records it."""
    base = make_tiny(tmp_path, "qwen2", name="tiny-qwen2-hd32", **HD32)
    rc, stdout, err = run_cli_capture("extend", base, "--method", "yarn", "--factor", "4", "--device", "cpu",
                                      "-o", tmp_path / "out", "--verify-in", "vllm")
    assert rc == 0, err
    assert "parity PASSED: vLLM on cpu" in err and "YaRNScalingRotaryEmbedding scaling_factor=4" in err, err
    parity = read_json(tmp_path / "out" / "manifest.json")["parity"]
    assert parity["vllm"]["passed"] is True and parity["vllm"]["ran"][0].startswith("vLLM 0.32"), parity
    assert parity["safetensors"]["passed"] is True
    print([line for line in err.splitlines() if "beyond" in line or "applied" in line])


# ---------------------------------------------------------------------------------------------------------------
# more families: every method vLLM is claimed for and the family's safetensors column holds, past the original
# context, each also failing with its scaling stripped (yarn: and with its attention factor dropped). One vLLM process
# per family (a family's models share one start of the environment). The default run proves one method per family of
# DEFAULT_FAMILIES, and that method stripped; ROPECONV_ALL_CELLS=1 runs every family and method.

VLLM_FAMILIES = ("mistral", "qwen3", "phi3", "gemma")
DEFAULT_FAMILIES = ("qwen3", "gemma")
PROVEN = ("yarn", "linear", "llama3", "ntk")  # the RoPE methods CELLS claims, past the original context


def family_methods(family: str) -> list[str]:
    from ropeconv import capabilities

    return [m for m in PROVEN if vllm.cell_for(m).support is Support.EXACT
            and capabilities.family_cell(family, m, "safetensors").support is not Support.REFUSED]


# collected only with ROPECONV_ALL_CELLS=1 (one more vLLM start per family): without it there is no test to skip
if ALL_CELLS:
    @pytest.mark.parametrize("family", VLLM_FAMILIES)
    def test_family_cells_match_transformers_and_fail_when_broken(family, tmp_path, in_vllm):
        """Every vLLM cell of the family, each stripped, yarn's attention factor dropped (the default run proves one
        cell of each of DEFAULT_FAMILIES in the batch above)."""
        chosen = family_methods(family)
        assert chosen, f"{family}: no vLLM cell claimed"
        base = make_tiny(tmp_path, family, name=f"tiny-{family}-hd32", **HD32)
        theta = read_json(base / "config.json").get("rope_theta", 10000.0)
        good = {m: extend(base, tmp_path / m, m) for m in chosen}
        bad = {f"{m} stripped": strip_scaling(good[m], tmp_path / f"{m}-stripped", theta) for m in chosen}
        if "yarn" in good:
            bad["yarn attention factor dropped"] = drop_attention_factor(good["yarn"], tmp_path / "yarn-af")
        reports = vllm.verify_in_vllm([*good.values(), *bad.values()])
        figures = {}
        for name, report in zip([*good, *bad], reports):
            figures[name] = (report.max_abs_logprob, report.applied.get("class"))
            if name in good:
                assert report.passed and report.top1 == 1.0, report.format()
                assert [b.name for b in report.bands] == ["within", "beyond"] and report.bands[-1].first_position == 64
            else:
                assert not report.passed and report.max_abs_logprob > 100 * vllm.MAX_ABS_LOGPROB, (name, report.format())
        print(f"vLLM {family}: max |Δ log p| (class) per cell:", figures)


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


def test_an_unmeasured_family_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(vllm.ENV, "off")
    out = extend(make_tiny(tmp_path, "olmo2", name="tiny-olmo2-hd32", **HD32), tmp_path / "out", "linear")
    rc, stdout, err = run_cli_capture("verify", out, "--runtime", "vllm")
    assert rc == 2 and stdout == "" and len(err.strip().splitlines()) == 1, err
    assert "refused for vLLM: olmo2: a family not measured in vLLM" in err, err


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


def test_a_base_that_is_not_a_model_folder_is_told_before_anything_runs(llama_base, tmp_path, monkeypatch):
    """--base is checked with the output (parity.engine_target, as --runtime mlx checks it), before the missing
    environment is told."""
    monkeypatch.setenv(vllm.ENV, "off")
    out = extend(llama_base, tmp_path / "out", "yarn")
    rc, stdout, err = run_cli_capture("verify", out, "--runtime", "vllm", "--base", tmp_path)
    assert rc == 2 and stdout == "" and len(err.strip().splitlines()) == 1, err
    assert f"--base {tmp_path}: not a HuggingFace model directory" in err, err


def test_cells_cover_every_method_and_the_docs_hold_the_table():
    """One record per method ropeconv has; the docs' table is generated from those records."""
    from ropeconv import methods

    assert {c.method for c in vllm.CELLS} == {m.NAME for m in methods.ordered()}
    assert {c.method for c in vllm.CELLS if c.support is Support.REFUSED} >= {"dynamic", "longrope", "alibi"}
    assert vllm.doc_table() in DOC.read_text(encoding="utf-8"), "regenerate the table: vllm.doc_table()"
    assert vllm.doc_family_table() in DOC.read_text(encoding="utf-8"), "regenerate: vllm.doc_family_table()"
    measured = {f.family for f in vllm.FAMILIES}
    assert measured == {"llama", "qwen2", "gpt2", *VLLM_FAMILIES}, "a family in FAMILIES is one the tests prove"


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
