"""--to mlx: an mlx-lm folder converted (and quantized) by mlx-lm's own convert, proven in mlx-lm through its KV cache
against transformers: every (family, method) cell the matrix claims for mlx passes and fails once the folder's
rope_scaling (or, for ntk, its rope_theta) is stripped; a quantized folder is judged through its float32 twin; the
refused cells are refused in one line with nothing written; inspect and verify take the folder and the output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ropeconv import methods
from ropeconv.capabilities import family_cell, family_cells
from ropeconv.families import FAMILIES
from ropeconv.methods.base import Support
from tests.conftest import (
    ORIGINAL_CTX,
    add_byte_level_tokenizer,
    assert_refused,
    default_cells,
    listing,
    make_tiny,
    on_quant_grid,
    read_json,
    run_cli,
)

pytest.importorskip("mlx_lm")

CELLS = default_cells(family_cells("mlx", "rope"), "mlx")
REFUSED = [(f, m.NAME) for f, fam in FAMILIES.items() if fam.position == "rope" for m in methods.ordered()
           if "rope" in methods.positions_of(m) and family_cell(f, m.NAME, "mlx").support is Support.REFUSED]
TOKENS = str(4 * ORIGINAL_CTX)  # the probe crosses the original context (positions 0 … 255)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mlx-bases")
    return {f: add_byte_level_tokenizer(make_tiny(root, f)) for f in sorted({f for f, _ in CELLS})}


def method_args(method: str) -> list[str]:
    return [] if method == "none" else ["--factor", "4"]


def strip(folder: Path, base: Path) -> None:
    """The mlx folder as a converter that drops the plan would ship it: no rope_scaling, the base's rope_theta."""
    config = read_json(folder / "config.json")
    config["rope_scaling"] = None
    config["rope_theta"] = read_json(base / "config.json").get("rope_theta", 10000.0)
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": config["rope_theta"]}
    (folder / "config.json").write_text(json.dumps(config))


def test_matrix_has_the_mlx_column(capsys):
    assert run_cli("methods", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    cells = {row["method"]: row["cells"]["mlx"]["support"] for row in data["methods"]}
    assert cells["yarn"] == cells["linear"] == cells["llama3"] == cells["dynamic"] == cells["none"] == "exact"
    assert cells["longrope"] == cells["freqs"] == "refused"
    assert family_cell("gemma", "yarn", "mlx").support is Support.REFUSED  # mlx-lm's gemma reads no scaling
    assert family_cell("llama", "yarn", "mlx").support is Support.EXACT
    assert ("llama", "yarn") in CELLS and ("qwen2", "linear") in CELLS


@pytest.mark.parametrize("family,method", CELLS)
def test_mlx_folder_matches_transformers_and_fails_when_stripped(bases, tmp_path, family, method, capsys):
    base, out = bases[family], tmp_path / "out"
    capsys.readouterr()
    assert run_cli("extend", base, "--method", method, *method_args(method), "--to", "mlx", "--tokens", TOKENS,
                   "-o", out, "-q", "--json") == 0
    report = json.loads(capsys.readouterr().out)["parity"]
    manifest = read_json(out / "manifest.json")
    assert report["passed"] and report["runtime"] == "mlx-lm", report
    assert report["last_position"] >= ORIGINAL_CTX  # beyond the original context
    record = manifest["formats"]["mlx"]
    assert record["folder"] == "mlx" and record["dtype"] == "float32" and record["bits"] is None
    assert "mlx/model.safetensors" in manifest["files"] and "mlx/ropeconv-mlx.json" in manifest["files"]
    assert not (out / ".mlx-staging").exists()
    config = read_json(out / "mlx" / "config.json")
    assert config["rope_scaling"] == record["declaration"]
    if method != "none":  # nothing to strip there
        strip(out / "mlx", base)
        capsys.readouterr()
        assert run_cli("verify", out / "mlx", "--tokens", TOKENS) == 1, capsys.readouterr().err
    print(f"{family} {method} mlx: max|Δlogit| {report['max_abs_logit']:.3e}")


def test_safetensors_and_mlx_together_then_inspect_and_verify(bases, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("extend", bases["llama"], "--method", "yarn", "--factor", "4", "--to", "safetensors,mlx",
                   "-o", out, "-q") == 0
    manifest = read_json(out / "manifest.json")
    assert manifest["parity"]["safetensors"]["passed"] and manifest["parity"]["mlx"]["passed"]
    assert read_json(out / "config.json")["rope_scaling"] == read_json(out / "mlx" / "config.json")["rope_scaling"]
    capsys.readouterr()
    assert run_cli("inspect", out) == 0
    assert "mlx/ (float32, not quantized" in capsys.readouterr().out
    assert run_cli("inspect", out / "mlx", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "mlx" and info["rope_scaling"]["type"] == "yarn"
    assert info["ropeconv"]["method"] == "yarn" and info["ropeconv"]["target_ctx"] == 4 * ORIGINAL_CTX
    assert run_cli("verify", out, "--json") == 0
    reports = json.loads(capsys.readouterr().out)
    reports = reports if isinstance(reports, list) else reports.get("reports", [reports])
    assert {r["runtime"] for r in reports} >= {"mlx-lm", "transformers"} and all(r["passed"] for r in reports)
    assert run_cli("verify", out / "mlx", "--json") == 0
    assert json.loads(capsys.readouterr().out)["runtime"] == "mlx-lm"
    from ropeconv.parity.runtimes import runtime_for

    assert runtime_for(out / "mlx").name == "mlx-lm" and runtime_for(out).name == "transformers"


def test_quantized_mlx_is_written_recorded_and_judged_through_its_twin(bases, tmp_path, capsys):
    import shutil

    grid = on_quant_grid(Path(shutil.copytree(bases["llama"], tmp_path / "grid")))
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli("extend", grid, "--method", "yarn", "--factor", "4", "--to", "mlx", "--mlx-bits", "8",
                   "--mlx-group-size", "32", "-o", out, "--tokens", TOKENS) == 0
    err = capsys.readouterr().err
    assert "float32 twin of mlx/" in err and "q-probe" in err, err
    manifest = read_json(out / "manifest.json")
    record = manifest["formats"]["mlx"]
    assert record["bits"] == 8 and record["group_size"] == 32
    assert read_json(out / "mlx" / "config.json")["quantization"]["bits"] == 8
    assert manifest["parity"]["mlx"]["passed"]
    assert not list(out.glob(".mlx*twin*"))  # the twin is removed
    assert run_cli("verify", out / "mlx", "--tokens", TOKENS) == 0


def test_mlx_options_without_to_mlx_are_refused(bases, out, capsys):
    before = listing(out.parent)
    rc = run_cli("extend", bases["llama"], "--method", "yarn", "--factor", "4", "--to", "safetensors",
                 "--mlx-bits", "8", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=("--mlx-bits", "--to mlx"))


def test_yarn_attention_factor_is_refused(bases, out, capsys):
    before = listing(out.parent)
    rc = run_cli("extend", bases["llama"], "--method", "yarn", "--factor", "4", "--attention-factor", "1.25",
                 "--to", "safetensors,mlx", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=("attention factor", "mlx-lm"))


def test_longrope_is_refused(bases, out, tmp_path, capsys):
    factors = tmp_path / "lr.json"
    pairs = read_json(bases["llama"] / "config.json")["hidden_size"] // read_json(
        bases["llama"] / "config.json")["num_attention_heads"] // 2
    factors.write_text(json.dumps({"short_factor": [1.0] * pairs, "long_factor": [1.0 + j / pairs for j in range(pairs)]}))
    before = listing(out.parent)
    rc = run_cli("extend", bases["llama"], "--method", "longrope", "--factor", "4", "--factors", factors,
                 "--to", "mlx", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=("long factors",))


@pytest.mark.parametrize("family,method", [c for c in REFUSED if c[0] == "gemma" and c[1] in ("yarn", "linear")])
def test_a_family_whose_mlx_model_reads_no_scaling_is_refused(tmp_path, out, family, method, capsys):
    base = add_byte_level_tokenizer(make_tiny(tmp_path, family))
    before = listing(out.parent)
    rc = run_cli("extend", base, "--method", method, "--factor", "4", "--to", "mlx", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=("nn.RoPE",))


def test_eval_runs_the_mlx_folder_and_generates_what_transformers_generates(bases, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("extend", bases["llama"], "--method", "yarn", "--factor", "4", "--to", "safetensors,mlx",
                   "--no-verify", "-o", out, "-q") == 0
    answers = {}
    for runtime, model in (("hf", out), ("mlx", out / "mlx")):
        capsys.readouterr()
        assert run_cli("eval", "passkey", model, "--runtime", runtime, "--lengths", "200", "--trials", "3",
                       "--json", "-q", "--cache-dir", tmp_path / f"cache-{runtime}") == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["runtime"] == {"hf": "transformers", "mlx": "mlx-lm"}[runtime], doc["runtime"]
        answers[runtime] = [(t["key"], t["output"]) for t in doc["trials"]]
    assert answers["mlx"] == answers["hf"] and len(answers["hf"]) == 3


def test_float16_mlx_is_judged_through_a_float32_twin_from_the_base(bases, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli("extend", bases["llama"], "--method", "yarn", "--factor", "4", "--to", "mlx", "--mlx-dtype",
                   "float16", "-o", out, "--tokens", TOKENS) == 0
    err = capsys.readouterr().err
    assert "converted by mlx_lm.convert from the base in float32" in err and "q-probe" in err, err
    assert read_json(out / "manifest.json")["formats"]["mlx"]["dtype"] == "float16"
    assert not [p.name for p in out.iterdir() if "twin" in p.name or "staging" in p.name]
