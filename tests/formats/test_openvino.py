"""--to openvino: an OpenVINO IR folder exported by optimum-intel's own exporter (weights compressed by its NNCF path
with --ov-weights), proven in OpenVINO through OVModelForCausalLM's stateful KV cache against transformers.

The exports are the slow part (~10 s each on 2 cores), so the parity matrix exports every cell's transformers folder
(written by `extend --to safetensors`, the same config.json the format stages) in one start of the OpenVINO
environment and runs them all in it: each claimed cell matches transformers past the original context, and fails once
its scaling is stripped (the IR of the base's own rope, and the unscaled reference) or its attention factor dropped;
LongRoPE matches on both sides of its short/long switch. The default suite runs a subset of the cells; every cell the
matrix claims runs with ROPECONV_ALL_CELLS=1. The CLI tests run the format itself: an int8 folder judged through its
float32 twin, a stripped folder failing `verify`, the refusals in one line with nothing written.

OpenVINO lives in its own environment (`make openvino`, .venv-ov, or $ROPECONV_OPENVINO_PYTHON); without it these
tests skip, unless ROPECONV_REQUIRE_OPENVINO=1 (make test), where they fail."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from ropeconv import methods
from ropeconv.capabilities import family_cell, family_cells
from ropeconv.families import FAMILIES
from ropeconv.methods.base import Support
from ropeconv.openvino_export import env
from ropeconv.openvino_export.output import export_job
from tests.conftest import (
    ORIGINAL_CTX,
    add_byte_level_tokenizer,
    assert_refused,
    listing,
    make_tiny,
    on_quant_grid,
    read_json,
    run_cli,
)

REQUIRED = os.environ.get("ROPECONV_REQUIRE_OPENVINO") == "1"
ALL_CELLS = os.environ.get("ROPECONV_ALL_CELLS") == "1"
TOKENS = 4 * ORIGINAL_CTX  # the probe crosses the original context (positions 0 … 255)
SHORT = ORIGINAL_CTX - 24  # a prompt below the original context: LongRoPE's short factors
DECODE = 8  # the probe's last tokens one per call through OpenVINO's KV cache
MAX_LOGPROB = 1e-3  # every correct cell measured ≤ 1e-4; every wrong one ≥ 0.5
MIN_WRONG = 0.5


def _python() -> Path | None:
    try:
        return env.python()
    except Exception:  # noqa: BLE001 - a bad $ROPECONV_OPENVINO_PYTHON is "no environment" here
        return None


OV = _python()
needs_ov = pytest.mark.skipif(OV is None and not REQUIRED,
                              reason="no OpenVINO environment (make openvino, or ROPECONV_OPENVINO_PYTHON)")

# (family, method, extra extend args): the default suite's cells; ROPECONV_ALL_CELLS=1 adds every claimed cell
DEFAULT = [("llama", "none", ()), ("llama", "yarn", ()), ("llama", "yarn", ("--attention-factor", "1.25")),
           ("llama", "longrope", ()), ("qwen2", "linear", ()), ("mistral", "llama3", ()), ("phi3", "longrope", ()),
           ("qwen3", "ntk", ())]
CLAIMED = family_cells("openvino", "rope")
CELLS = DEFAULT + ([(f, m, ()) for f, m in CLAIMED if (f, m, ()) not in DEFAULT] if ALL_CELLS else [])
REFUSED = [(f, m.NAME) for f, fam in FAMILIES.items() if fam.position == "rope" for m in methods.ordered()
           if "rope" in methods.positions_of(m) and family_cell(f, m.NAME, "openvino").support is Support.REFUSED]


def cell_id(cell) -> str:
    family, method, extra = cell
    return f"{family}-{method}" + ("-af" if extra else "")


def probe_ids(n: int, vocab: int = 512) -> list[int]:
    return [1] + [3 + (i * 37 + 11) % (vocab - 3) for i in range(n - 1)]


def factors_file(base: Path, tmp: Path) -> Path:
    """LongRoPE factors for the base: short 1.0, long rising from 1 to 4 (the two sets far apart)."""
    config = read_json(base / "config.json")
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    pairs = int(head_dim * config.get("partial_rotary_factor", 1.0)) // 2
    path = tmp / f"{base.name}-longrope.json"
    path.write_text(json.dumps({"short_factor": [1.0] * pairs,
                                "long_factor": [1.0 + 3.0 * j / max(1, pairs - 1) for j in range(pairs)]}))
    return path


def method_args(base: Path, method: str, tmp: Path) -> list[str]:
    if method == "none":
        return []
    if method in ("longrope", "freqs"):
        if method == "freqs":
            config = read_json(base / "config.json")
            head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
            pairs = int(head_dim * config.get("partial_rotary_factor", 1.0)) // 2
            path = tmp / f"{base.name}-freqs.json"
            path.write_text(json.dumps([1.0 + j / pairs for j in range(pairs)]))
            args = ["--factor", "4", "--factors", str(path)]
            if config.get("model_type") == "phi3":  # its config cannot declare another attention factor
                from ropeconv.methods.longrope import default_attention_factor

                args += ["--attention-factor", repr(default_attention_factor(4.0, ORIGINAL_CTX))]
            return args
        return ["--factor", "4", "--factors", str(factors_file(base, tmp))]
    return ["--factor", "4"]


def log_softmax(logits):
    import torch

    return torch.log_softmax(logits.double(), -1)


def reference(folder: Path, ids: list[int]):
    """transformers' log-probabilities of ids in one call (the plan as config.json declares it)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return log_softmax(model(torch.tensor([ids])).logits[0])


def max_diff(a, b) -> float:
    return float((a - b).abs().max())


@pytest.fixture(scope="module")
def ov_python() -> Path:
    if OV is None:
        pytest.fail("ROPECONV_REQUIRE_OPENVINO=1 and no OpenVINO environment: make openvino")
    return OV


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ov-bases")
    return {f: add_byte_level_tokenizer(make_tiny(root, f)) for f in sorted({c[0] for c in CELLS})}


@pytest.fixture(scope="module")
def matrix_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ov-matrix")


@pytest.fixture(scope="module")
def matrix(ov_python, bases, matrix_root) -> dict[str, dict[str, float]]:
    """Every cell's transformers folder exported and run in one start of the OpenVINO environment; per cell the
    max |Δ log-prob| of the IR vs transformers on the long probe (and the short one), and vs the unscaled base."""
    root = matrix_root
    started = time.monotonic()
    ids = probe_ids(TOKENS)
    folders, jobs = {}, []
    for cell in CELLS:
        family, method, extra = cell
        name = cell_id(cell)
        hf = root / f"{name}-hf"
        assert run_cli("extend", bases[family], "--method", method,
                       *method_args(bases[family], method, root), *extra, "--to", "safetensors", "--no-verify",
                       "-o", hf, "-q") == 0, name
        folders[name] = hf
        jobs.append(export_job(hf, root / f"{name}-ov"))
    # the int4 cell: a base whose weights NNCF's symmetric int4 groups of 32 hold exactly
    grid = on_quant_grid(Path(shutil.copytree(bases["llama"], root / "grid")))
    assert run_cli("extend", grid, "--method", "yarn", "--factor", "4", "--to", "safetensors", "--no-verify",
                   "-o", root / "int4-hf", "-q") == 0
    folders["int4"] = root / "int4-hf"
    jobs.append(export_job(root / "int4-hf", root / "int4-ov", "int4", 32))
    from ropeconv.parity.runtimes.openvino import load_logits, run_job

    passes = [{"first_position": 0, "n_tokens": TOKENS, "decode_steps": DECODE, "chunk_tokens": 0,
               "lead_tokens": 0},
              {"first_position": 0, "n_tokens": SHORT, "decode_steps": 0, "chunk_tokens": 0, "lead_tokens": 0}]
    jobs += [run_job(root / f"{name}-ov", ids, passes, root / f"{name}-logits") for name in folders]
    results, versions = env.run_jobs(jobs, interpreter=ov_python)
    runs = dict(zip(folders, results[len(folders):]))
    out: dict[str, dict[str, float]] = {}
    unscaled = {f: reference(b, ids) for f, b in bases.items()}
    refs = {name: reference(hf, ids) for name, hf in folders.items()}
    for name, hf in folders.items():
        long, short = (log_softmax(t) for t in load_logits(runs[name]))
        family = name.split("-")[0] if name != "int4" else "llama"
        short_ref = reference(hf, ids[:SHORT])
        out[name] = {"long": max_diff(long, refs[name]), "short": max_diff(short, short_ref),
                     "unscaled": max_diff(refs[name], unscaled[family]),
                     "ir_vs_unscaled": max_diff(long, unscaled[family]),
                     "short_vs_long_rows": max_diff(short, long[:SHORT])}
    if "llama-none" in folders:  # the stripped output: the IR of the base's own rope, judged against each plan
        none_ir = log_softmax(load_logits(runs["llama-none"])[0])
        for name in folders:
            if name.startswith("llama-") and name != "llama-none":
                out[name]["stripped_ir"] = max_diff(none_ir, refs[name])
    if "llama-yarn" in folders and "llama-yarn-af" in folders:  # the attention factor dropped (and added)
        yarn_ir = log_softmax(load_logits(runs["llama-yarn"])[0])
        out["llama-yarn-af"]["factor_dropped"] = max_diff(yarn_ir, refs["llama-yarn-af"])
    for name, figures in out.items():
        print(f"openvino {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()))
    print(f"openvino matrix: {len(folders)} folders exported and run in {time.monotonic() - started:.0f} s "
          f"(OpenVINO {versions.get('openvino')}, optimum-intel {versions.get('optimum-intel')})")
    return out


def test_matrix_has_the_openvino_column(capsys):
    assert run_cli("methods", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    cells = {row["method"]: row["cells"]["openvino"]["support"] for row in data["methods"]}
    assert cells["longrope"] == cells["none"] == "exact"
    assert cells["yarn"] == cells["linear"] == cells["llama3"] == cells["ntk"] == cells["freqs"] == "exact via carrier"
    assert cells["dynamic"] == cells["alibi"] == cells["absolute"] == "refused"
    assert family_cell("gemma", "yarn", "openvino").support is Support.REFUSED  # not proven yet
    assert family_cell("phi3", "yarn", "openvino").support is Support.REFUSED  # phi3's config takes longrope only
    assert family_cell("phi3", "longrope", "openvino").support is Support.EXACT
    assert all((f, m) in CLAIMED for f, m, _ in DEFAULT)


@needs_ov
@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_openvino_matches_transformers_past_the_original_context(matrix, cell):
    figures = matrix[cell_id(cell)]
    assert figures["long"] <= MAX_LOGPROB, figures
    assert figures["short"] <= MAX_LOGPROB, figures  # a prompt below the original length too
    family, method, _ = cell
    if method != "none":  # the plan changes the model past the original context: a stripped IR would not match
        assert figures["unscaled"] >= MIN_WRONG and figures["ir_vs_unscaled"] >= MIN_WRONG, figures
    if "stripped_ir" in figures:
        assert figures["stripped_ir"] >= MIN_WRONG, figures


@needs_ov
def test_yarn_attention_factor_is_in_the_ir(matrix):
    assert matrix["llama-yarn-af"]["long"] <= MAX_LOGPROB
    assert matrix["llama-yarn-af"]["factor_dropped"] >= MIN_WRONG, matrix["llama-yarn-af"]


@needs_ov
@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_longrope_switches_at_the_original_length(matrix, family):
    """A prompt below the original length runs the short factors, a longer one the long factors — both as
    transformers — so the same first tokens come out differently from the two calls."""
    figures = matrix[f"{family}-longrope"]
    assert figures["long"] <= MAX_LOGPROB and figures["short"] <= MAX_LOGPROB, figures
    assert figures["short_vs_long_rows"] >= MIN_WRONG, figures


@needs_ov
def test_int4_ir_of_a_grid_base_matches_transformers(matrix):
    assert matrix["int4"]["long"] <= 1e-2, matrix["int4"]  # NNCF's sym int4 groups of 32 hold the grid exactly


@needs_ov
def test_int8_openvino_is_written_recorded_and_judged_through_its_twin(ov_python, bases, tmp_path, capsys):
    grid = on_quant_grid(Path(shutil.copytree(bases["llama"], tmp_path / "grid")))
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli("extend", grid, "--method", "yarn", "--factor", "4", "--to", "safetensors,openvino",
                   "--ov-weights", "int8", "-o", out, "--tokens", TOKENS) == 0
    err = capsys.readouterr().err
    assert "float32 twin of openvino/" in err and "q-probe" in err, err
    manifest = read_json(out / "manifest.json")
    record = manifest["formats"]["openvino"]
    assert record["folder"] == "openvino" and record["weights"] == "int8"
    assert manifest["parity"]["openvino"]["passed"] and manifest["parity"]["safetensors"]["passed"]
    assert "openvino/openvino_model.xml" in manifest["files"] and "openvino/ropeconv-openvino.json" in manifest["files"]
    assert not [p.name for p in out.iterdir() if "twin" in p.name or "staging" in p.name]
    marker = read_json(out / "openvino" / "ropeconv-openvino.json")
    assert marker["weights"] == "int8" and marker["optimum_intel"] and marker["rope_parameters"]["rope_type"] == "yarn"
    assert run_cli("inspect", out / "openvino", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "openvino" and info["weights"] == "int8" and info["ropeconv"]["method"] == "yarn"
    from ropeconv.parity.runtimes import runtime_for

    assert runtime_for(out / "openvino").name == "openvino"
    print("openvino int8: " + "; ".join(line.strip() for line in err.splitlines() if "probe " in line))


@needs_ov
def test_a_stripped_openvino_folder_fails_verify(ov_python, bases, matrix, matrix_root, tmp_path, capsys):
    """The format's own writer (fp32), then its IR swapped for the base's own (the rope unscaled, as an exporter
    that drops the plan would write it): verify fails."""
    out = tmp_path / "out"
    assert run_cli("extend", bases["llama"], "--method", "yarn", "--factor", "4", "--to", "openvino",
                   "--no-verify", "-o", out, "-q") == 0
    assert read_json(out / "manifest.json")["formats"]["openvino"]["weights"] == "fp32"
    assert not (out / ".openvino-staging").exists()
    for name in ("openvino_model.xml", "openvino_model.bin"):
        shutil.copyfile(matrix_root / "llama-none-ov" / name, out / "openvino" / name)
    capsys.readouterr()
    assert run_cli("verify", out / "openvino", "--tokens", TOKENS) == 1, capsys.readouterr().err


def test_dynamic_is_refused_in_one_line(tmp_path, out, capsys):
    base = add_byte_level_tokenizer(make_tiny(tmp_path, "llama"))
    before = listing(out.parent)
    rc = run_cli("extend", base, "--method", "dynamic", "--factor", "4", "--to", "safetensors,openvino", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=("dynamic", "unscaled"))


@pytest.mark.parametrize("family,method", [c for c in REFUSED if c in (("gemma", "yarn"), ("phi3", "yarn"))])
def test_refused_families_are_refused(tmp_path, out, family, method, capsys):
    base = add_byte_level_tokenizer(make_tiny(tmp_path, family))
    before = listing(out.parent)
    rc = run_cli("extend", base, "--method", method, "--factor", "4", "--to", "openvino", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=("openvino",))


def test_without_the_openvino_environment_it_is_one_line(tmp_path, out, capsys, monkeypatch):
    monkeypatch.setenv(env.ENV, "off")
    base = add_byte_level_tokenizer(make_tiny(tmp_path, "llama"))
    before = listing(out.parent)
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "openvino", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=("make openvino", env.ENV))


def test_group_size_without_int4_is_refused(tmp_path, out, capsys):
    base = add_byte_level_tokenizer(make_tiny(tmp_path, "llama"))
    before = listing(out.parent)
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "openvino", "--ov-group-size", "32",
                 "-o", out)
    assert_refused(capsys, rc, out, before, mentions=("--ov-group-size", "int4"))
