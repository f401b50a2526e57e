"""ALiBi slope interpolation and learned absolute position tables: the math against independent
computations, the safetensors path against transformers (through ropeconv.runtime for ALiBi), the
sensitivity of each check, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ropeconv import methods
from ropeconv.capabilities import family_cells
from ropeconv.families import FAMILIES
from ropeconv.positions import AbsolutePlan
from ropeconv.positions.absolute import interpolate_rows, resample_table
from ropeconv.positions.alibi import base_slopes
from tests.conftest import ORIGINAL_CTX, assert_refused, listing, make_tiny, read_json, run_cli

# ---------------------------------------------------------------------------------------------- math

@pytest.mark.parametrize("heads", [1, 2, 3, 4, 5, 6, 8, 12, 16, 20, 32, 48, 64, 71, 112])
def test_slopes_equal_transformers_bloom_and_mpt(heads):
    """Both of transformers' slope routines (floor-based BLOOM, ceil-interleaved MPT) give our slopes."""
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    ours = base_slopes(heads)
    bloom = _get_alibi_slopes(heads, torch.device("cpu")).double().numpy()
    # MPT's tensor is slope × (j − (n − 1)); at j = n − 2 it is −slope
    mpt = -build_mpt_alibi_tensor(heads, 2)[:, 0, 0].double().numpy()
    np.testing.assert_allclose(ours, bloom, rtol=1e-6)
    np.testing.assert_allclose(ours, mpt, rtol=1e-6)
    if heads & (heads - 1) == 0:  # a power of two: the paper's m_h = 2^(−8h/H), h = 1…H
        np.testing.assert_allclose(ours, [2.0 ** (-8 * h / heads) for h in range(1, heads + 1)], rtol=1e-12)


@pytest.mark.parametrize("rows,target", [(64, 256), (64, 100), (1024, 4096), (7, 29), (2, 5)])
def test_table_interpolation_matches_torch_and_keeps_endpoints(rows, target):
    table = np.random.default_rng(rows).standard_normal((rows, 8))
    ours = interpolate_rows(table, target)
    # independent: torch's linear resampling with aligned corners, along the position axis
    theirs = torch.nn.functional.interpolate(torch.from_numpy(table).T[None], size=target, mode="linear",
                                             align_corners=True)[0].T.numpy()
    assert ours.shape == (target, 8)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours[0], table[0])
    np.testing.assert_array_equal(ours[-1], table[-1])
    # a row whose grid point falls exactly on a source row is that row: p·(L−1)/(L'−1) integral
    for p in range(target):
        x = p * (rows - 1) / (target - 1)
        if x == int(x):
            np.testing.assert_allclose(ours[p], table[int(x)], atol=1e-12)


def test_offset_rows_kept():
    table = np.arange(2 * 3 + 4 * 3, dtype=np.float64).reshape(6, 3)  # 2 offset rows + 4 positions
    plan = AbsolutePlan("absolute", "t", offset=2, original_ctx=4, target_ctx=10, factor=2.5)
    out = resample_table(table, plan)
    assert out.shape == (12, 3)
    np.testing.assert_array_equal(out[:2], table[:2])
    np.testing.assert_allclose(out[2:], interpolate_rows(table[2:], 10))


def test_identity_resample_is_exact():
    table = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    np.testing.assert_array_equal(interpolate_rows(table, 64).astype(np.float32), table)


# ---------------------------------------------------------------------------------- bases and runs

POSITIONS = ("alibi", "absolute")
FAMILIES_HERE = [f for f, fam in FAMILIES.items() if fam.position in POSITIONS]


def method_variants(method: str) -> list[tuple[str, ...]]:
    """The method's arguments for a ×4 extension, once plain and once with each of its switches (alibi --dynamic)."""
    module = methods.get(method)
    plain = ("--method", method, "--factor", "4")
    return [plain] + [plain + (o.flag,) for o in module.OPTIONS if o.kind is bool]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("pos-bases")
    return {mt: make_tiny(root, mt) for mt in FAMILIES_HERE}


# every (family, method) the matrix claims for safetensors on ALiBi and learned-table families, with each switch
# of the method (none aside: parity/test_tf4 runs it)
CELLS = [(f, args) for f, m in family_cells("safetensors") if f in FAMILIES_HERE and m != "none"
         for args in method_variants(m)]


def _extend(base, out, args, capsys=None) -> dict:
    """The manifest, with the run's own parity figures (stdout --json) under "run" when capsys is given."""
    if capsys:
        capsys.readouterr()
    assert run_cli("extend", base, *args, "-o", out, "-q", "--json") == 0
    manifest = read_json(out / "manifest.json")
    if capsys:
        manifest["run"] = json.loads(capsys.readouterr().out)
    return manifest


def _verify(out) -> int:
    return run_cli("verify", out, "-q")


@pytest.mark.parametrize("arch,args", CELLS, ids=lambda v: v if isinstance(v, str) else "-".join(v[1::2]))
def test_safetensors_cell_passes_and_fails_without_interpolation(bases, tmp_path, arch, args, capsys):
    out = tmp_path / "out"
    manifest = _extend(bases[arch], out, args, capsys)
    parity = manifest["parity"]["safetensors"]
    assert parity["passed"] and manifest["run"]["parity"]["max_abs_logit"] < 1e-4, manifest["run"]["parity"]
    assert parity["last_position"] >= ORIGINAL_CTX  # the probe went beyond the training length
    assert _verify(out) == 0
    config = read_json(out / "config.json")
    card = (out / "README.md").read_text()
    if FAMILIES[arch].position == "alibi":
        scaling = config["ropeconv_alibi_scaling"]
        assert scaling["original_ctx"] == ORIGINAL_CTX and scaling["factor"] == 4.0
        assert scaling["rule"] == ("proportional" if "--dynamic" in args else "static")
        assert "Vanilla transformers ignores" in card and "ropeconv.runtime.apply" in card
        if arch == "mpt":
            assert config["max_seq_len"] == 4 * ORIGINAL_CTX
        # sensitivity: without the key (what vanilla transformers computes), verify fails
        del config["ropeconv_alibi_scaling"]
        (out / "config.json").write_text(json.dumps(config))
    else:
        spec = FAMILIES[arch].arch
        assert config[spec.ctx_key] == 4 * ORIGINAL_CTX
        tensors = load_file(out / "model.safetensors")
        name = spec.table
        offset = spec.table_offset
        assert tensors[name].shape[0] == offset + 4 * ORIGINAL_CTX
        # sensitivity: the base rows followed by copies of the last one (a table extended without interpolation)
        base_table = load_file(bases[arch] / "model.safetensors")[name]
        padded = torch.cat([base_table, base_table[-1:].expand(4 * ORIGINAL_CTX - ORIGINAL_CTX, -1)])
        tensors[name] = padded.contiguous()
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    assert _verify(out) == 1


def test_dynamic_alibi_is_the_base_up_to_the_training_length(bases, tmp_path):
    """--dynamic leaves every sequence up to the original context exactly as the base computes it."""
    from transformers import AutoModelForCausalLM

    import ropeconv.runtime

    out = tmp_path / "dyn"
    _extend(bases["bloom"], out, ("--method", "alibi", "--factor", "4", "--dynamic", "--no-verify"))
    base = AutoModelForCausalLM.from_pretrained(bases["bloom"]).eval()
    ext = AutoModelForCausalLM.from_pretrained(out).eval()
    assert ropeconv.runtime.apply(ext) == 2  # one hook per block
    ids = torch.randint(16, 512, (1, 2 * ORIGINAL_CTX), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        short_b, short_e = base(ids[:, :ORIGINAL_CTX]).logits, ext(ids[:, :ORIGINAL_CTX]).logits
        long_b, long_e = base(ids).logits, ext(ids).logits
    torch.testing.assert_close(short_e, short_b, rtol=0, atol=0)
    assert (long_e - long_b).abs().max() > 1e-3


def test_runtime_apply_without_key_changes_nothing(bases):
    from transformers import AutoModelForCausalLM

    import ropeconv.runtime

    assert ropeconv.runtime.apply(AutoModelForCausalLM.from_pretrained(bases["mpt"])) == 0


def test_none_keeps_everything(bases, tmp_path):
    out = tmp_path / "none"
    manifest = _extend(bases["opt"], out, ("--method", "none"))
    assert manifest["plan"]["target_ctx"] == ORIGINAL_CTX
    base_t, out_t = load_file(bases["opt"] / "model.safetensors"), load_file(out / "model.safetensors")
    assert base_t.keys() == out_t.keys() and all(torch.equal(base_t[k], out_t[k]) for k in base_t)


def test_methods_matrix_lists_the_new_cells(capsys):
    assert run_cli("methods", "--json") == 0
    listed = json.loads(capsys.readouterr().out)["methods"]
    rows = {r["method"]: r["cells"] for r in listed}
    acts = {r["method"]: r["architectures"] for r in listed}
    assert acts["alibi"] == ["bloom", "mpt"] and acts["absolute"] == ["gpt2", "opt"] and "llama" in acts["yarn"]
    assert rows["alibi"]["gguf"]["support"] == "refused"
    assert rows["alibi"]["onnx"]["support"] != "refused"
    assert all(rows["absolute"][fmt]["support"] == "exact" for fmt in ("safetensors", "gguf", "onnx"))
    assert rows["absolute"]["mlx"]["support"] == "refused"  # mlx-lm has no OPT, and its GPT-2 is unproven


# --------------------------------------------------------------------------------------- refusals

def _refused(capsys, tmp_path, base, *args, mentions=()):
    out = tmp_path / "refused"
    before = listing(tmp_path)
    rc = run_cli("extend", base, *args, "-o", out, "-q")
    return assert_refused(capsys, rc, out, before, mentions=mentions)


def test_alibi_on_a_rope_model(capsys, tmp_path, tiny_llama):
    _refused(capsys, tmp_path, tiny_llama, "--method", "alibi", "--factor", "2", mentions=("alibi", "rope"))


def test_absolute_on_a_model_without_a_table(capsys, tmp_path, tiny_llama, bases):
    _refused(capsys, tmp_path, tiny_llama, "--method", "absolute", "--factor", "2", mentions=("absolute",))
    _refused(capsys, tmp_path, bases["bloom"], "--method", "absolute", "--factor", "2", mentions=("alibi",))


def test_rope_method_on_alibi_and_table_models(capsys, tmp_path, bases):
    _refused(capsys, tmp_path, bases["mpt"], "--method", "yarn", "--factor", "2", mentions=("--method alibi",))
    _refused(capsys, tmp_path, bases["gpt2"], "--method", "linear", "--factor", "2", mentions=("--method absolute",))


def test_alibi_to_gguf_refused(capsys, tmp_path, bases):
    _refused(capsys, tmp_path, bases["bloom"], "--method", "alibi", "--factor", "2", "--to", "safetensors,gguf",
             mentions=("llama.cpp", "onnx"))


def test_bloom_without_a_training_length(capsys, tmp_path, bases):
    config = read_json(bases["bloom"] / "config.json")
    stripped = tmp_path / "bloom-nolen"
    stripped.mkdir()
    config.pop("seq_length")
    (stripped / "config.json").write_text(json.dumps(config))
    (stripped / "model.safetensors").symlink_to(bases["bloom"] / "model.safetensors")
    _refused(capsys, tmp_path, stripped, "--method", "alibi", "--factor", "2", mentions=("--original-ctx",))
    assert run_cli("extend", stripped, "--method", "alibi", "--factor", "2", "--original-ctx", "64", "--no-verify",
                   "-q", "-o", tmp_path / "ok") == 0


def test_mpt_with_another_bias_max(capsys, tmp_path, bases):
    config = read_json(bases["mpt"] / "config.json")
    odd = tmp_path / "mpt-abm"
    odd.mkdir()
    config["attn_config"] = dict(config.get("attn_config") or {}, alibi_bias_max=16)
    (odd / "config.json").write_text(json.dumps(config))
    (odd / "model.safetensors").symlink_to(bases["mpt"] / "model.safetensors")
    _refused(capsys, tmp_path, odd, "--method", "alibi", "--factor", "2", mentions=("alibi_bias_max",))


def test_none_takes_no_factor(capsys, tmp_path, bases):
    _refused(capsys, tmp_path, bases["gpt2"], "--method", "none", "--factor", "2", mentions=("none",))


def test_probe_longer_than_the_table(capsys, tmp_path, bases):
    _refused(capsys, tmp_path, bases["gpt2"], "--method", "absolute", "--factor", "2", "--tokens", "200",
             mentions=("rows",))


def test_inspect_and_base_gone(bases, tmp_path, capsys):
    import shutil

    base = tmp_path / "gpt2-copy"
    shutil.copytree(bases["gpt2"], base)
    out = tmp_path / "out"
    _extend(base, out, ("--method", "absolute", "--factor", "2", "--no-verify"))
    capsys.readouterr()
    assert run_cli("inspect", out, "--json") == 0
    scheme = json.loads(capsys.readouterr().out)["position_scheme"]
    assert scheme == {"type": "absolute", "table": "transformer.wpe.weight", "rows": 2 * ORIGINAL_CTX, "offset": 0}
    shutil.rmtree(base)
    # the output's table is not the base's: it cannot stand in for the reference
    rc = run_cli("verify", out, "-q")
    assert_refused(capsys, rc, tmp_path / "nothing", listing(tmp_path), mentions=("--base",))
    assert run_cli("verify", out, "--base", bases["gpt2"], "-q") == 0
