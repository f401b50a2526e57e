"""What SGLang would read from ropeconv's config.json, for every method ropeconv claims for safetensors.

SGLang is not installable here, so this reimplements, small and faithful, how its source turns a config into a rotary
module, and compares what it would apply (rope type, base, factor, original length, attention factor) with what
transformers applies (its config class and ROPE_INIT_FUNCTIONS, the parity reference's own). The SGLang source read
(github.com/sgl-project/sglang, main branch as stored at the commits named):

- python/sglang/srt/utils/hf_transformers_utils.py, get_rope_config(config) (commit 2aa2e2d0…; introduced by
  sglang PR #20931, see also PR #26187 "Wire YARN rope_parameters through LFM2", a model that read rope_scaling while
  transformers v5 configs put YaRN under rope_parameters): `config.rope_parameters` when the transformers config
  object has it (transformers 5), else `config.rope_theta` and `config.rope_scaling` (4.x). Older model files
  (python/sglang/srt/models/llama.py, commit 00239548…, whose LlamaForCausalLM also loads Phi3ForCausalLM) read
  `getattr(config, "rope_theta", 10000)` and `getattr(config, "rope_scaling", None)`, and overwrite the dict's
  original_max_position_embeddings with the config's top-level one when it has one.
- python/sglang/srt/layers/rotary_embedding/factory.py, get_rope (commit eb047c16…): the type is
  rope_scaling["rope_type"], else ["type"]; max_position is the config's max_position_embeddings.
  linear: factor. dynamic: factor (alpha: another class). yarn: factor, original_max_position_embeddings,
  extrapolation_factor, attn_factor, beta_fast, beta_slow, truncate — not attention_factor, mscale, mscale_all_dim
  (those only for "deepseek_yarn"). longrope: short_factor, long_factor, original_max_position_embeddings,
  short_mscale, long_mscale — not attention_factor. llama3: factor, low/high_freq_factor, original length.
- python/sglang/srt/layers/rotary_embedding/yarn.py, YaRNScalingRotaryEmbedding (commit 8448045c…): cos/sin times
  (0.1·ln(factor) + 1) · attn_factor (attn_factor default 1).
- python/sglang/srt/layers/rotary_embedding/rope_variant.py (commit 6170d975…): Phi3LongRoPEScaledRotaryEmbedding's
  mscale is short_mscale / long_mscale, else sqrt(1 + ln(max_position / original) / ln(original)), with the long
  factors for a batch whenever a position passes the original length; DynamicNTKScalingRotaryEmbedding is static:
  one base, base·(factor·max_len/max_position − (factor − 1))^(d/(d−2)) with max_len = max_position·factor, for
  every position.

ropeconv writes `rope_parameters` and the legacy `rope_theta` + `rope_scaling` together, the same dict, so both of
SGLang's lookups find the same keys (asserted below). Where SGLang's get_rope would apply something else than
transformers, the cell is recorded in MISREAD with the reason (the README lists them), and the test asserts the
difference is really there — so a record that stops being true fails too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ropeconv import capabilities, methods
from ropeconv.methods.base import Support
from tests.conftest import make_tiny, run_cli

README = Path(__file__).resolve().parents[2] / "README.md"

# (family, method, extra extend options) → what SGLang's get_rope gets wrong, from the source above
MISREAD = {
    ("llama", "dynamic", ()): "SGLang's DynamicNTKScalingRotaryEmbedding is static: one base, scaled for "
                              "max_position·factor, at every position (transformers keeps the base's own within the "
                              "original context and scales by sequence length)",
    ("llama", "yarn", ("--attention-factor", "1.5")): "SGLang's yarn reads attn_factor, not attention_factor: it "
                                                       "applies 0.1·ln(factor) + 1",
    ("llama", "yarn", ("--mscale", "1.0", "--mscale-all-dim", "0.5")): "SGLang's yarn ignores mscale and "
                                                                      "mscale_all_dim (deepseek_yarn only): it "
                                                                      "applies 0.1·ln(factor) + 1",
    ("llama", "longrope", ("--attention-factor", "1.1")): "SGLang's longrope reads short_mscale/long_mscale only: it "
                                                          "computes sqrt(1 + ln(max_position/original)/ln(original))",
    ("llama", "freqs", ()): "carried as longrope with attention_factor 1.0, which SGLang does not read: it computes "
                            "sqrt(1 + ln(max_position/original)/ln(original))",
}

# phi3's config cannot declare an attention factor: transformers derives sqrt(1 + ln s / ln L) (here 256/64 tokens),
# so a freqs output for it names that one
NEEDS = {("phi3", "freqs"): ("--attention-factor", repr(math.sqrt(1 + math.log(4) / math.log(64))))}
CASES = [(family, m.NAME, NEEDS.get((family, m.NAME), ())) for family in ("llama", "phi3") for m in methods.ordered()
         if "rope" in methods.positions_of(m)
         and capabilities.family_cell(family, m.NAME, "safetensors").support is not Support.REFUSED] + [
    key for key in MISREAD if key[2]]


def sglang_view(out: Path, config_obj, v5: bool) -> dict:
    """What SGLang's model code and get_rope would apply for this output. v5: the config object has
    rope_parameters (transformers 5: get_rope_config's first branch); else the 4.x attributes read from the JSON."""
    raw = json.loads((out / "config.json").read_text())
    if v5:
        scaling = dict(config_obj.rope_parameters)
        theta = scaling["rope_theta"]
    else:  # 4.x: the JSON's keys are the config object's attributes
        theta, scaling = raw.get("rope_theta", 10000), raw.get("rope_scaling")
        scaling = dict(scaling) if scaling else None
        if scaling is not None and raw.get("original_max_position_embeddings"):  # llama.py's override
            scaling["original_max_position_embeddings"] = raw["original_max_position_embeddings"]
    max_position = raw.get("max_position_embeddings", 8192)
    head_dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
    rotary_dim = int(head_dim * (scaling or {}).get("partial_rotary_factor", raw.get("partial_rotary_factor", 1)))
    view = {"theta": float(theta), "type": "default", "factor": None, "original": None, "attention": 1.0,
            "base_at_original": float(theta)}
    if scaling is None:
        return view
    kind = scaling.get("rope_type", scaling.get("type"))
    view["type"] = kind
    if kind == "default":
        return view
    if kind in ("linear", "dynamic", "yarn", "llama3"):
        view["factor"] = float(scaling["factor"])
    if kind in ("yarn", "llama3", "longrope"):
        view["original"] = int(scaling["original_max_position_embeddings"])
    if kind == "yarn":
        s = scaling["factor"]
        view["attention"] = (0.1 * math.log(s) + 1.0 if s > 1 else 1.0) * scaling.get("attn_factor", 1)
    elif kind == "dynamic":
        s = scaling["factor"]
        max_len = max_position * s
        view["base_at_original"] = theta * ((s * max_len / max_position) - (s - 1)) ** (rotary_dim / (rotary_dim - 2))
    elif kind == "longrope":
        scale = max_position / view["original"]
        computed = math.sqrt(1 + math.log(scale) / math.log(view["original"])) if scale > 1 else 1.0
        view["attention"] = scaling.get("long_mscale", computed)
        view["factor"] = scale
    return view


def transformers_view(config_obj) -> dict:
    """What transformers applies: its config's rope_parameters and ROPE_INIT_FUNCTIONS' attention factor."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    p = dict(config_obj.rope_parameters)
    kind = p.get("rope_type", "default")
    view = {"theta": float(p["rope_theta"]), "type": kind, "factor": None, "original": None, "attention": 1.0,
            "base_at_original": float(p["rope_theta"])}
    if kind == "default":
        return view
    _, view["attention"] = ROPE_INIT_FUNCTIONS[kind](config_obj, "cpu")
    view["attention"] = float(view["attention"])
    if kind in ("linear", "dynamic", "yarn", "llama3"):
        view["factor"] = float(p["factor"])
    if kind in ("yarn", "llama3", "longrope"):
        view["original"] = int(p.get("original_max_position_embeddings")
                               or config_obj.original_max_position_embeddings)
    if kind == "longrope":
        view["factor"] = config_obj.max_position_embeddings / view["original"]
    return view


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sglang-bases")
    hd32 = dict(hidden_size=128, head_dim=32, num_attention_heads=4, num_key_value_heads=2)
    return {"llama": make_tiny(root, "llama", **hd32), "phi3": make_tiny(root, "phi3", **hd32)}


def extended(base: Path, out: Path, method: str, extra: tuple[str, ...]) -> Path:
    args: list = ["--factor", "4"] if method not in ("none", "longrope", "freqs") else []
    half = 16  # rotary pairs of head_dim 32
    if method == "longrope":
        factors = out.parent / f"{out.name}-factors.json"
        factors.write_text(json.dumps({"short_factor": [1.0] * half, "long_factor": [1.0 + i / 4 for i in range(half)]}))
        args = ["--factors", factors, "--target-ctx", "256"]
    if method == "freqs":
        factors = out.parent / f"{out.name}-freqs.json"
        factors.write_text(json.dumps([1.0 + i / 4 for i in range(half)]))
        args = ["--factors", factors, "--target-ctx", "256"]
    assert run_cli("extend", base, "--method", method, *args, *extra, "--no-verify", "-q", "-o", out) == 0
    return out


@pytest.mark.parametrize("family,method,extra", CASES, ids=lambda v: "-".join(v) if isinstance(v, tuple) else v)
def test_sglang_reads_what_transformers_reads(family, method, extra, bases, tmp_path):
    from transformers import AutoConfig

    out = extended(bases[family], tmp_path / "out", method, extra)
    raw = json.loads((out / "config.json").read_text())
    if "rope_scaling" in raw or method != "none":
        # both of SGLang's lookups (rope_parameters, then rope_scaling) find the same declaration: every key of the
        # legacy dict (phi3's is the strict {type, short_factor, long_factor}, its original length at the top level)
        # as rope_parameters holds it
        legacy = dict(raw.get("rope_scaling") or {"rope_type": "default"})
        legacy["rope_type"] = legacy.pop("type", legacy.get("rope_type"))
        modern = raw["rope_parameters"]
        assert {k: modern.get(k) for k in legacy} == legacy, (legacy, modern)
    config_obj = AutoConfig.from_pretrained(out)
    want = transformers_view(config_obj)
    for v5 in (True, False):
        got = sglang_view(out, config_obj, v5)
        diff = {k: (got[k], want[k]) for k in want
                if not (got[k] == want[k] or (isinstance(got[k], float) and isinstance(want[k], float)
                                              and math.isclose(got[k], want[k], rel_tol=1e-6)))}
        if (family, method, extra) in MISREAD:
            assert diff, f"recorded as misread by SGLang, but it reads the same: {got}"
        else:
            assert not diff, f"SGLang ({'rope_parameters' if v5 else 'rope_scaling'}) would apply {diff}"
    print(family, method, *extra, "→ SGLang", "MISREADS" if (family, method, extra) in MISREAD else "reads", want)


def test_the_readme_names_the_keys_sglang_reads_and_the_cells_it_misreads():
    text = README.read_text(encoding="utf-8")
    assert "SGLang" in text and "attn_factor" in text and "short_mscale" in text and "rope_scaling" in text
