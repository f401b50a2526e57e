"""Each architecture × method: tiny random model → extend → verify passes at 4× the original
context in transformers; and verify fails once the scaling is taken out of the output's config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ropeconv import methods
from ropeconv.capabilities import family_cell, family_cells
from ropeconv.checkpoint import load_checkpoint
from ropeconv.families import FAMILIES
from tests.conftest import ORIGINAL_CTX, assert_refused, default_cells, listing, make_tiny, read_json, run_cli

TOKENS = str(4 * ORIGINAL_CTX)
ROPE_ARCHS = sorted(a for a, fam in FAMILIES.items() if fam.position == "rope")  # others: positions/test_alibi_absolute
# every RoPE method that extends (none: parity/test_tf4 runs it per family in both majors)
ALL_METHODS = [m.NAME for m in methods.ordered() if "rope" in methods.positions_of(m) and m.NAME != "none"]
# every (family, method) the matrix claims for safetensors (capabilities.family_cell: Phi-3's transformers takes only
# rope_type default or longrope, OLMo 2's 4.x config only {type, factor} of linear or dynamic, …), and the rest
CASES = sorted(((a, m) for a, m in family_cells("safetensors", "rope") if m != "none"), key=lambda c: c[0])
REFUSED = [(a, m) for a in ROPE_ARCHS for m in ALL_METHODS if (a, m) not in CASES]
RUN = default_cells(CASES, "safetensors")  # the cells the default suite runs (Family.test_methods)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {arch: make_tiny(root, arch) for arch in ROPE_ARCHS}


def method_args(tmp: Path, base: Path, arch: str, method: str) -> list[str]:
    n = load_checkpoint(base).scheme.n_pairs
    if method == "longrope":
        path = tmp / "longrope.json"
        path.write_text(json.dumps({"short_factor": np.linspace(1.0, 1.5, n).tolist(),
                                    "long_factor": np.linspace(1.0, 5.0, n).tolist()}))
        return ["--factors", str(path)]
    if method == "freqs":
        path = tmp / "freqs.json"
        path.write_text(json.dumps(np.geomspace(1.0, 6.0, n).tolist()))
        args = ["--factors", str(path)]
        if arch == "phi3":
            from ropeconv.methods.longrope import default_attention_factor

            args += ["--attention-factor", repr(default_attention_factor(4.0, ORIGINAL_CTX))]
        return args
    return []


def strip_scaling(out: Path, base: Path) -> None:
    """Rewrite the output's config.json with the base's rope settings: what a converter that drops
    the extension would ship."""
    config, base_config = read_json(out / "config.json"), read_json(base / "config.json")
    for key in ("rope_scaling", "rope_parameters", "rope_theta", "rotary_emb_base", "max_position_embeddings",
                "original_max_position_embeddings"):
        config.pop(key, None)
        if key in base_config:
            config[key] = base_config[key]
    (out / "config.json").write_text(json.dumps(config))


def extend(base: Path, out: Path, arch: str, method: str, *extra: str) -> int:
    return run_cli("extend", base, "--method", method, "--factor", "4", "-o", out, "--tokens", TOKENS, "-q",
                   *method_args(out.parent, base, arch, method), *extra)


@pytest.mark.parametrize("arch,method", RUN)
def test_extend_verifies_and_fails_without_scaling(bases, tmp_path, arch, method, capsys):
    out = tmp_path / "out"
    assert extend(bases[arch], out, arch, method) == 0
    manifest = read_json(out / "manifest.json")
    assert manifest["parity"]["safetensors"]["passed"] is True
    assert manifest["parity"]["safetensors"]["last_position"] >= 3 * ORIGINAL_CTX

    capsys.readouterr()
    assert run_cli("verify", out, "--tokens", TOKENS, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["max_abs_logit"] <= report["tolerance"]["max_abs_logit"]
    beyond = [b for b in report["bands"] if b["first_position"] >= ORIGINAL_CTX]
    assert beyond, "the probe must reach beyond the original context"

    strip_scaling(out, bases[arch])
    assert run_cli("verify", out, "--tokens", TOKENS) == 1


@pytest.mark.parametrize("arch,method", REFUSED)
def test_refused_cell_is_refused_in_one_line(bases, tmp_path, arch, method, capsys):
    """A cell the matrix refuses for a family is refused by extend: exit 2, the matrix's reason, nothing written."""
    args = method_args(tmp_path, bases[arch], arch, method)
    out = tmp_path / "out"
    before = listing(tmp_path)
    capsys.readouterr()
    rc = run_cli("extend", bases[arch], "--method", method, "--factor", "4", "-o", out, "--no-verify", *args)
    assert_refused(capsys, rc, out, before, mentions=(family_cell(arch, method, "safetensors").how[:40],))


def _edit_rope(out: Path, **changes) -> None:
    config = read_json(out / "config.json")
    for key in ("rope_scaling", "rope_parameters"):
        if config.get(key):
            config[key].update(changes)
    (out / "config.json").write_text(json.dumps(config))


def test_yarn_attention_factor_off_by_a_tenth_of_a_percent_fails(bases, tmp_path):
    out = tmp_path / "out"
    assert extend(bases["llama"], out, "llama", "yarn") == 0
    plan = read_json(out / "manifest.json")["plan"]
    _edit_rope(out, attention_factor=plan["attention_factor"] * 1.001)
    assert run_cli("verify", out, "--tokens", TOKENS) == 1


def test_longrope_swapped_factor_sets_fail(bases, tmp_path):
    out = tmp_path / "out"
    assert extend(bases["llama"], out, "llama", "longrope") == 0
    rope = read_json(out / "config.json")["rope_parameters"]
    _edit_rope(out, short_factor=rope["long_factor"], long_factor=rope["short_factor"])
    assert run_cli("verify", out, "--tokens", TOKENS) == 1


def test_dynamic_declared_at_target_length_fails(bases, tmp_path):
    """transformers' dynamic NTK keys off max_position_embeddings: declaring the target there
    (the natural mistake) silently disables the scaling."""
    out = tmp_path / "out"
    assert extend(bases["llama"], out, "llama", "dynamic") == 0
    config = read_json(out / "config.json")
    config["max_position_embeddings"] = 4 * ORIGINAL_CTX
    (out / "config.json").write_text(json.dumps(config))
    assert run_cli("verify", out, "--tokens", TOKENS) == 1


def test_yarn_betas_are_carried(bases, tmp_path):
    # tiny model (d=16, b=1e4, L=64): defaults ramp over pairs 0..3, these over pairs 1..5
    out = tmp_path / "out"
    assert extend(bases["llama"], out, "llama", "yarn", "--beta-fast", "2", "--beta-slow", "0.05") == 0
    rope = read_json(out / "config.json")["rope_scaling"]
    assert (rope["beta_fast"], rope["beta_slow"]) == (2.0, 0.05)
    _edit_rope(out, beta_fast=32.0, beta_slow=1.0)
    assert run_cli("verify", out, "--tokens", TOKENS) == 1


def test_dynamic_baked_at_n_is_a_static_base_exact_at_n(bases, tmp_path):
    """--bake-at N: the base dynamic NTK would use at N tokens, declared as a plain rope_theta."""
    from ropeconv.positions.rope import dynamic_ntk_theta

    out = tmp_path / "out"
    assert extend(bases["llama"], out, "llama", "dynamic", "--bake-at", str(4 * ORIGINAL_CTX)) == 0
    config = read_json(out / "config.json")
    expected = dynamic_ntk_theta(10000.0, 16, 4.0, ORIGINAL_CTX, 4 * ORIGINAL_CTX)
    assert config["rope_scaling"] is None and config["rope_theta"] == pytest.approx(expected, rel=1e-12)
    # a prefill of N tokens through transformers' dynamic NTK equals the baked output; of fewer tokens it does not
    import torch

    from ropeconv.parity.runtimes import hf

    dyn = tmp_path / "dyn"
    assert extend(bases["llama"], dyn, "llama", "dynamic") == 0
    baked_model, dynamic_model = hf.load(out, torch.device("cpu")), hf.load(dyn, torch.device("cpu"))
    ids = torch.randint(16, 512, (1, 4 * ORIGINAL_CTX), generator=torch.Generator().manual_seed(1))
    # shorter first: transformers keeps the base of the longest call so far until a call falls below the original
    for n, same in ((3 * ORIGINAL_CTX, False), (4 * ORIGINAL_CTX, True)):
        positions = torch.arange(n)[None]
        gap = (hf.logits(baked_model, ids[:, :n], positions) - hf.logits(dynamic_model, ids[:, :n], positions)).abs()
        assert (gap.max().item() < 1e-3) is same, (n, gap.max().item())


@pytest.mark.parametrize("method", ["yarn", "llama3"])
def test_olmo2_safetensors_refuses_what_transformers_4x_cannot_read(bases, tmp_path, method, capsys):
    from tests.conftest import assert_refused, listing

    out = tmp_path / "out"
    before = listing(tmp_path)
    capsys.readouterr()
    assert_refused(capsys, extend(bases["olmo2"], out, "olmo2", method), out, before, mentions=("olmo2", "4.x"))


def test_olmo2_rope_scaling_is_the_two_keys_4x_accepts(bases, tmp_path):
    out = tmp_path / "out"
    assert extend(bases["olmo2"], out, "olmo2", "linear", "--no-verify") == 0
    assert read_json(out / "config.json")["rope_scaling"] == {"type": "linear", "factor": 4.0}
