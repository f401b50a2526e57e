"""Retrofitting the real SmolLM2-135M Q4_1 GGUF: metadata rewritten, every tensor byte kept, parity
in llama.cpp against transformers, and each exact GGUF cell fails once its declaration is dropped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ropeconv.fixtures import smollm2
from ropeconv.gguf_io.reader import read_gguf
from ropeconv.gguf_io.writer import rewrite_gguf
from tests.conftest import gguf_tensor_digests, run_cli

pytest.importorskip("llama_cpp")

WORK = Path(os.environ.get("ROPECONV_WORK", Path(__file__).resolve().parents[2] / "work"))
TOKENS = "1024"  # placed at positions 7680–8703: across the original 8192


@pytest.fixture(scope="session")
def gguf() -> Path:
    return smollm2.gguf_path()


@pytest.fixture(scope="session")
def smol_hf() -> Path:
    # transformers' dequantization of the same GGUF, saved once: a fast reference for the cell matrix
    return smollm2.materialize_hf(WORK / "smollm2-135m")


def strip(path: Path, keys: set[str], tensors: set[str] = frozenset()) -> Path:
    """A copy without the given declaration: what a converter that drops the extension ships."""
    src = read_gguf(path)
    out = path.with_name("stripped.gguf")
    drop = {k for k in keys if src.field(k) is not None}
    if tensors:  # neutral carriers (all ones) stand in for removed tensors
        add = {name: np.ones(src.tensor(name).shape, dtype=np.float32) for name in tensors}
    else:
        add = {}
    rewrite_gguf(src, out, drop_keys=drop, add_tensors=add)
    return out


def test_yarn_x4_retrofit_keeps_every_tensor_and_proves_parity_against_the_same_gguf(gguf, tmp_path, capsys):
    out = tmp_path / "smol-32k.gguf"
    assert run_cli("extend", gguf, "--method", "yarn", "--factor", "4", "-o", out, "--tokens", TOKENS) == 0
    before, after = gguf_tensor_digests(gguf), gguf_tensor_digests(out)
    assert after == before  # all 272 tensors byte for byte, nothing added
    meta = read_gguf(out)
    assert meta.value("llama.context_length") == 32768
    assert meta.value("llama.rope.scaling.type") == "yarn"
    assert meta.value("llama.rope.scaling.factor") == 4.0
    assert meta.value("llama.rope.scaling.original_context_length") == 8192
    assert meta.field("llama.rope.scaling.attn_factor") is None  # default mscale: llama.cpp derives it
    assert json.loads(meta.value("ropeconv.plan"))["method"] == "yarn"
    src = read_gguf(gguf)
    for f in src.fields:
        if f.key != "llama.context_length":
            assert meta.field(f.key).raw == f.raw
    out_text = capsys.readouterr().err
    assert "parity PASSED: llama.cpp" in out_text

    stripped = strip(out, {"llama.rope.scaling.type", "llama.rope.scaling.factor",
                           "llama.rope.scaling.original_context_length"})
    # strip() keeps the ropeconv.* keys, so verify still checks against the intended plan
    assert run_cli("verify", stripped, "--tokens", TOKENS) == 1


CELLS = [
    ("linear", [], {"llama.rope.scaling.type", "llama.rope.scaling.factor"}, set()),
    ("ntk", [], {"llama.rope.freq_base"}, set()),
    ("dynamic", ["--bake-at", "32768"], {"llama.rope.freq_base"}, set()),
    ("yarn", ["--attention-factor", "1.0"], {"llama.rope.scaling.attn_factor"}, set()),
    ("yarn", ["--beta-fast", "16", "--beta-slow", "2"], {"llama.rope.scaling.attn_factor"}, {"rope_freqs.weight"}),
    ("llama3", [], set(), {"rope_freqs.weight"}),
    ("freqs", ["FACTORS"], {"llama.rope.scaling.attn_factor"}, {"rope_freqs.weight"}),
    # the type must stay: llama's loader reads the factor tensors only with type longrope
    ("longrope", ["LONGROPE"], {"llama.rope.scaling.attn_factor"},
     {"rope_factors_long.weight", "rope_factors_short.weight"}),
]


def test_retrofit_cells_cover_the_llama_gguf_matrix():
    """The declarations above are typed out (each an independent expectation), so the methods they cover are checked
    against the matrix: every GGUF cell the matrix claims for llama, and dynamic's --bake-at way out."""
    from ropeconv.capabilities import family_cells

    claimed = {m for f, m in family_cells("gguf") if f == "llama"} - {"none"}
    assert {method for method, *_ in CELLS} == claimed | {"dynamic"}


@pytest.mark.parametrize("method,args,declared_keys,declared_tensors", CELLS,
                         ids=["linear", "ntk", "dynamic-baked", "yarn-attn", "yarn-betas", "llama3", "freqs",
                              "longrope"])
def test_gguf_cell_is_exact_in_llama_cpp(gguf, smol_hf, tmp_path, method, args, declared_keys, declared_tensors):
    if args == ["FACTORS"]:
        path = tmp_path / "f.json"
        path.write_text(json.dumps(np.geomspace(1.0, 4.0, 32).tolist()))
        args = ["--factors", str(path), "--attention-factor", "1.05"]
    elif args == ["LONGROPE"]:
        path = tmp_path / "lr.json"
        path.write_text(json.dumps({"short_factor": np.linspace(1.0, 1.3, 32).tolist(),
                                    "long_factor": np.geomspace(1.0, 5.0, 32).tolist()}))
        args = ["--factors", str(path)]
    out = tmp_path / f"smol-{method}.gguf"
    assert run_cli("extend", gguf, "--method", method, "--factor", "4", "-o", out, "--no-verify", "-q", *args) == 0
    assert gguf_tensor_digests(out).items() >= gguf_tensor_digests(gguf).items()
    assert run_cli("verify", out, "--base", smol_hf, "--tokens", TOKENS, "-q") == 0
    base_theta = {"llama.rope.freq_base"} & declared_keys
    keys = declared_keys - base_theta
    stripped = strip(out, keys, declared_tensors)
    if base_theta:  # put the base's rope base back
        src = read_gguf(stripped)
        restored = stripped.with_name("restored.gguf")
        rewrite_gguf(src, restored, set_fields={"llama.rope.freq_base": (src.field("llama.rope.freq_base").value_type,
                                                                         100000.0)})
        stripped = restored
    assert run_cli("verify", stripped, "--base", smol_hf, "--tokens", TOKENS, "-q") == 1


def test_dynamic_is_refused_with_the_bake_at_offer(gguf, tmp_path, capsys):
    out = tmp_path / "o.gguf"
    assert run_cli("extend", gguf, "--method", "dynamic", "--factor", "4", "-o", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--bake-at" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_scaled_gguf_is_refused_without_rebase(gguf, tmp_path, capsys):
    first = tmp_path / "first.gguf"
    assert run_cli("extend", gguf, "--method", "linear", "--factor", "2", "-o", first, "--no-verify", "-q") == 0
    capsys.readouterr()
    out = tmp_path / "second.gguf"
    assert run_cli("extend", first, "--method", "yarn", "--factor", "4", "-o", out, "--no-verify") == 2
    assert "--rebase" in capsys.readouterr().err and not out.exists()
    assert run_cli("extend", first, "--method", "yarn", "--factor", "4", "-o", out, "--no-verify", "--rebase",
                   "-q") == 0
    meta = read_gguf(out)
    assert meta.value("llama.rope.scaling.type") == "yarn" and meta.value("llama.rope.scaling.factor") == 4.0


@pytest.mark.parametrize("damage", ["magic", "truncated", "offset"])
def test_bad_gguf_input_is_one_line_and_writes_nothing(gguf, tmp_path, capsys, damage):
    bad = tmp_path / "bad.gguf"
    data = bytearray(gguf.read_bytes()[: 2_000_000])
    if damage == "magic":
        data[:4] = b"GGUX"
    elif damage == "offset":
        data = bytearray(gguf.read_bytes())
        t = read_gguf(gguf).tensors[-1]
        data = data[: t.offset]  # the last tensor's data points past the end
    bad.write_bytes(bytes(data))
    outdir = tmp_path / "o"
    outdir.mkdir()
    out = outdir / "o.gguf"
    assert run_cli("extend", bad, "--method", "yarn", "--factor", "4", "-o", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ropeconv: error:") and "Traceback" not in err[0]
    assert list(outdir.iterdir()) == []


def test_unknown_gguf_architecture_is_refused(gguf, tmp_path, capsys):
    src = read_gguf(gguf)
    odd = tmp_path / "odd.gguf"
    rewrite_gguf(src, odd, set_fields={"general.architecture": (src.field("general.architecture").value_type,
                                                                "mamba")})
    assert run_cli("extend", odd, "--method", "yarn", "--factor", "4", "-o", tmp_path / "o.gguf") == 2
    assert "unknown GGUF architecture 'mamba'" in capsys.readouterr().err
