"""Our inverse frequencies and attention factors equal transformers' own rope functions.

transformers computes in float32 (eps 1.19e-7) through up to six roundings — pow, two divides, the
ramp, two products and a sum for YaRN's blend — so it lands within ~6 ulp of the exact value; our
plan is float64. The comparison uses rtol 1e-6 (≈8 ulp); a wrong formula is off by far more (the
smallest deliberate change below, a factor off by 1e-4, is caught).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ropeconv import methods
from ropeconv.methods.base import ExtendRequest
from ropeconv.positions import RopeScheme, attention_factor_at, inv_freq_at

RTOL = 1e-6
HEAD_DIMS = [32, 64, 128]
PARTIALS = [1.0, 0.5, 0.25]
THETAS = [10000.0, 500000.0]
ORIGINAL = 4096


def scheme(head_dim: int, partial: float, theta: float, original: int = ORIGINAL) -> RopeScheme:
    return RopeScheme(theta=theta, head_dim=head_dim, rotary_dim=int(head_dim * partial), original_ctx=original,
                      declared_ctx=original)


def hf_config(head_dim: int, partial: float, theta: float, max_pos: int, rope: dict) -> LlamaConfig:
    params = {"rope_theta": theta, "partial_rotary_factor": partial, **rope}
    return LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                       max_position_embeddings=max_pos, rope_parameters=params)


def hf_inv_freq(config: LlamaConfig, rope_type: str, seq_len: int | None = None):
    inv, att = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)
    return inv.double().numpy(), float(att)


def assert_same(ours: np.ndarray, theirs: np.ndarray, slack: np.ndarray | float = 0.0) -> None:
    assert ours.shape == theirs.shape
    bound = RTOL * np.abs(theirs) + slack
    bad = np.abs(ours - theirs) > bound
    assert not bad.any(), f"pairs {np.flatnonzero(bad).tolist()}: ours {ours[bad]} vs transformers {theirs[bad]}"


def ramp_slack(sch: RopeScheme) -> np.ndarray:
    """YaRN's ramp is a float32 value in [0, 1] (error ≤ 2 ulp = 2.4e-7); the blend
    θ·(r/s + 1 − r) carries that error times θ_j, which near r = 1 is many ulp of the result."""
    d = sch.rotary_dim
    return 2.4e-7 / sch.theta ** (np.arange(0, d, 2) / d)


def plan_of(name: str, sch: RopeScheme, factor: float, **options):
    return methods.get(name).plan(sch, ExtendRequest(factor=factor, options=options))


grid = pytest.mark.parametrize(
    "head_dim,partial,theta", [(h, p, t) for h in HEAD_DIMS for p in PARTIALS for t in THETAS]
)


@grid
@pytest.mark.parametrize("factor", [2.0, 4.5, 16.0])
def test_linear(head_dim, partial, theta, factor):
    plan = plan_of("linear", scheme(head_dim, partial, theta), factor)
    inv, att = hf_inv_freq(hf_config(head_dim, partial, theta, plan.target_ctx,
                                     {"rope_type": "linear", "factor": factor}), "linear")
    assert_same(inv_freq_at(plan, 10), inv)
    assert attention_factor_at(plan, 10) == att == 1.0


@grid
@pytest.mark.parametrize("factor", [2.0, 8.0])
def test_ntk_is_default_rope_at_the_new_base(head_dim, partial, theta, factor):
    sch = scheme(head_dim, partial, theta)
    plan = plan_of("ntk", sch, factor)
    d = sch.rotary_dim
    # the paper's defining property: lowest frequency exactly θ_last / s, highest unchanged
    base = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ours = inv_freq_at(plan, 10)
    assert math.isclose(ours[-1], base[-1] / factor, rel_tol=1e-12)
    assert ours[0] == base[0] == 1.0
    # transformers has no ntk type: its linear type at factor 1 is the default rope with partial rotary honoured
    new_base = {"rope_type": "linear", "factor": 1.0}
    inv, _ = hf_inv_freq(hf_config(head_dim, partial, theta * factor ** (d / (d - 2)), ORIGINAL, new_base), "linear")
    assert_same(ours, inv)


@grid
@pytest.mark.parametrize("factor", [2.0, 8.0])
def test_dynamic_across_lengths(head_dim, partial, theta, factor):
    plan = plan_of("dynamic", scheme(head_dim, partial, theta), factor)
    config = hf_config(head_dim, partial, theta, ORIGINAL, {"rope_type": "dynamic", "factor": factor})
    for seq_len in (100, ORIGINAL, ORIGINAL + 1, 3 * ORIGINAL, 20 * ORIGINAL):
        inv, att = hf_inv_freq(config, "dynamic", seq_len=seq_len)
        assert_same(inv_freq_at(plan, seq_len), inv)
        assert att == attention_factor_at(plan, seq_len) == 1.0


YARN_VARIANTS = [
    {},
    {"beta_fast": 64.0, "beta_slow": 2.0},
    {"beta_fast": 16.0, "beta_slow": 0.5},
    {"attention_factor": 1.0},
    {"attention_factor": 1.37},
    {"mscale": 0.707, "mscale_all_dim": 0.707},
    {"mscale": 1.0, "mscale_all_dim": 0.5},
    {"truncate": False},
]


@grid
@pytest.mark.parametrize("factor", [2.0, 4.0, 32.0])
@pytest.mark.parametrize("variant", YARN_VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "defaults")
def test_yarn(head_dim, partial, theta, factor, variant):
    sch = scheme(head_dim, partial, theta)
    plan = plan_of("yarn", sch, factor, **variant)
    rope = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": ORIGINAL, **variant}
    inv, att = hf_inv_freq(hf_config(head_dim, partial, theta, plan.target_ctx, rope), "yarn")
    assert_same(inv_freq_at(plan, 10), inv, ramp_slack(sch))
    assert math.isclose(attention_factor_at(plan, 10), att, rel_tol=1e-12)


def test_yarn_paper_examples():
    # methods.md §4: Llama-2 (L=4096, d=128, b=1e4) keeps pairs 0..20, divides pairs ≥ 46; s=8 → 1.2079
    plan = plan_of("yarn", scheme(128, 1.0, 10000.0), 8.0)
    assert all(d == 1.0 for d in plan.divisors[:21])
    assert all(math.isclose(d, 8.0) for d in plan.divisors[46:])
    assert round(plan.attention_factor, 4) == 1.2079


@grid
@pytest.mark.parametrize("factor", [4.0, 32.0])
@pytest.mark.parametrize("explicit", [None, 1.25])
def test_longrope_both_sides_of_the_switch(tmp_path, head_dim, partial, theta, factor, explicit):
    n = int(head_dim * partial) // 2
    rng = np.random.default_rng(n)
    short = sorted(rng.uniform(1.0, 2.0, n).tolist())
    long = sorted(rng.uniform(1.0, 1.25 * factor, n).tolist())
    path = tmp_path / "factors.json"
    path.write_text(json.dumps({"short_factor": short, "long_factor": long}))
    options = {"factors": path} if explicit is None else {"factors": path, "attention_factor": explicit}
    plan = plan_of("longrope", scheme(head_dim, partial, theta), factor, **options)
    rope = {"rope_type": "longrope", "short_factor": short, "long_factor": long, "factor": factor,
            "original_max_position_embeddings": ORIGINAL}
    if explicit is not None:
        rope["attention_factor"] = explicit
    config = hf_config(head_dim, partial, theta, plan.target_ctx, rope)
    for seq_len in (10, ORIGINAL, ORIGINAL + 1, plan.target_ctx):
        inv, att = hf_inv_freq(config, "longrope", seq_len=seq_len)
        assert_same(inv_freq_at(plan, seq_len), inv)
        assert math.isclose(attention_factor_at(plan, seq_len), att, rel_tol=1e-12)


def test_longrope_phi3_mini_attention_factor():
    # methods.md §6: Phi-3-mini-128k, s = 32, L = 4096 → 1.19024
    from ropeconv.methods.longrope import default_attention_factor

    assert round(default_attention_factor(32.0, 4096), 5) == 1.19024


@grid
@pytest.mark.parametrize("factor,low,high", [(8.0, 1.0, 4.0), (32.0, 1.0, 4.0), (4.0, 2.0, 8.0)])
def test_llama3(head_dim, partial, theta, factor, low, high):
    plan = plan_of("llama3", scheme(head_dim, partial, theta, 8192), factor, low_freq_factor=low, high_freq_factor=high)
    rope = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": 8192}
    inv, att = hf_inv_freq(hf_config(head_dim, partial, theta, plan.target_ctx, rope), "llama3")
    assert_same(inv_freq_at(plan, 10), inv)
    assert attention_factor_at(plan, 10) == att == 1.0


def test_llama31_band_counts():
    # methods.md §5: d=128, θ=5e5, L=8192, s=8: 29 pairs kept, 29 divided by 8, 6 smoothed
    plan = plan_of("llama3", scheme(128, 1.0, 500000.0, 8192), 8.0)
    kept = sum(d == 1.0 for d in plan.divisors)
    divided = sum(d == 8.0 for d in plan.divisors)
    assert (kept, divided, 64 - kept - divided) == (29, 29, 6)


@grid
def test_freqs_carried_by_longrope(tmp_path, head_dim, partial, theta):
    n = int(head_dim * partial) // 2
    factors = np.linspace(1.0, 7.5, n).tolist()
    path = tmp_path / "f.json"
    path.write_text(json.dumps(factors))
    plan = plan_of("freqs", scheme(head_dim, partial, theta), 8.0, factors=path, attention_factor=1.1)
    rope = {"rope_type": "longrope", "short_factor": factors, "long_factor": factors, "factor": 8.0,
            "original_max_position_embeddings": ORIGINAL, "attention_factor": 1.1}
    config = hf_config(head_dim, partial, theta, plan.target_ctx, rope)
    base = 1.0 / theta ** (np.arange(0, 2 * n, 2) / (2 * n))
    for seq_len in (10, ORIGINAL + 1):
        inv, att = hf_inv_freq(config, "longrope", seq_len=seq_len)
        assert_same(inv_freq_at(plan, seq_len), inv)
        np.testing.assert_allclose(inv_freq_at(plan, seq_len), base / np.asarray(factors), rtol=1e-15)
        assert att == attention_factor_at(plan, seq_len) == 1.1


def test_a_small_error_is_caught():
    """The comparison can fail: a factor off by 1e-4 is outside RTOL."""
    plan = plan_of("linear", scheme(64, 1.0, 10000.0), 4.0)
    inv, _ = hf_inv_freq(hf_config(64, 1.0, 10000.0, plan.target_ctx, {"rope_type": "linear", "factor": 4.0004}),
                         "linear")
    with pytest.raises(AssertionError):
        assert_same(inv_freq_at(plan, 10), inv)
    sch = scheme(64, 1.0, 10000.0)
    yarn = plan_of("yarn", sch, 4.0, beta_fast=32.0)
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL, "beta_fast": 31.0}
    inv, _ = hf_inv_freq(hf_config(64, 1.0, 10000.0, yarn.target_ctx, rope | {"truncate": False}), "yarn")
    with pytest.raises(AssertionError):
        assert_same(inv_freq_at(yarn, 10), inv, ramp_slack(sch))
