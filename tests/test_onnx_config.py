"""The ONNX plan reads config.json through ropeconv's view of transformers' config classes (onnx_export/config.py),
so that a dry run imports no transformers. Here every family's plan is made twice, once through that view and once
through transformers' own config object (what the plan read before), over configs as transformers saves them,
configs that omit every key whose default the view states (so the class defaults and the derived keys decide), and
the variants whose derived keys differ (sliding windows switched on, NoPE every other layer, Gemma 3's older
pattern key): the two plans must be equal, dimensions, windows, initializers and all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_tiny, run_cli
from ropeconv.families import FAMILIES, ONNX_LAYOUTS

# keys dropped from every family's saved config besides those its layout gives defaults for
DROPPED = ("tie_word_embeddings", "layer_types", "word_embed_proj_dim", "no_rope_layers")

# Qwen3MoeConfig's top-k default (8) exceeds the tiny model's 4 experts: refused, and the refusal names the default
TOP_8_OF_4 = "the class's top 8 of 4 experts"
# family → (name, keys set, keys dropped): configs whose derived keys take another value than the tiny model's
VARIANTS = {
    "qwen2": [("windows from max_window_layers", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1),
               ("layer_types",)),
              ("layer_types null", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1,
                                        layer_types=None), ())],
    "qwen3": [("windows from max_window_layers", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1),
               ("layer_types",))],
    "qwen2_moe": [("every other layer windowed", dict(use_sliding_window=True, sliding_window=16, max_window_layers=2),
                   ("layer_types",))],
    "qwen3_moe": [("a window switched on", dict(use_sliding_window=True, sliding_window=16), ()),
                  (TOP_8_OF_4, {}, ("num_experts_per_tok",))],
    "smollm3": [("NoPE every other layer, those windowed", dict(use_sliding_window=True, sliding_window=16,
                                                                no_rope_layer_interval=2),
                 ("no_rope_layers", "layer_types"))],
    "gemma3_text": [("the older sliding_window_pattern", dict(sliding_window_pattern=1), ("layer_types",))],
    "mistral": [("a window", dict(sliding_window=16), ())],
    "gpt2": [("unscaled, by layer", dict(scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True), ())],
    "mpt": [("attn_config clamps and scales", dict(attn_config={"clip_qkv": 8.0, "softmax_scale": 0.25}), ())],
    "gpt_neox": [("sequential residual", dict(use_parallel_residual=False), ())],
    "opt": [("post-norm", dict(do_layer_norm_before=False), ())],
}
# what a minimal config must keep for the family's own tests to load it (gemma3_text: 2 layers need a full one)
KEEP = {"gemma3_text": dict(sliding_window_pattern=2), "qwen3_moe": dict(num_experts_per_tok=2)}
CASES = [(family, "as saved") for family in ONNX_LAYOUTS] + [(family, "defaults") for family in ONNX_LAYOUTS] + \
        [(family, name) for family, variants in VARIANTS.items() for name, _, _ in variants]
METHOD = {"rope": "yarn", "alibi": "alibi", "absolute": "absolute"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-config")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = make_tiny(root, family)
        return built[family]
    return get


def _config_case(base: Path, dst: Path, family: str, case: str) -> Path:
    """A copy of the tiny checkpoint (its weights linked) under the case's config.json."""
    dst.mkdir()
    for item in base.iterdir():
        if item.name != "config.json":
            (dst / item.name).symlink_to(item)
    config = json.loads((base / "config.json").read_text())
    if case == "defaults":
        for key in {k for k, _ in ONNX_LAYOUTS[family].config_defaults} | set(DROPPED):
            config.pop(key, None)
        config.update(KEEP.get(family, {}))
    elif case != "as saved":
        _, set_keys, dropped = next(v for v in VARIANTS[family] if v[0] == case)
        for key in dropped:
            config.pop(key, None)
        config.update(set_keys)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _planned(monkeypatch, base: Path, out: Path, family: str, reader=None):
    """The ONNX plan a dry run made, or the refusal it raised (the exception's text)."""
    from ropeconv.onnx_export import output, plan as plan_module

    seen = []
    real = output.plan_onnx

    def spy(*args, **kwargs):
        try:
            made = real(*args, **kwargs)
        except Exception as exc:
            seen.append(f"refused: {exc}")
            raise
        seen.append(made)
        return made

    with monkeypatch.context() as m:
        m.setattr(output, "plan_onnx", spy)
        if reader is not None:
            m.setattr(plan_module, "config_view", reader)
        run_cli("extend", base, "--method", METHOD[FAMILIES[family].position], "--factor", "2", "--to", "onnx",
                "--dry-run", "-o", out)
    assert len(seen) == 1, f"{family}: the dry run made no ONNX plan"
    return seen[0]


def _transformers_config(ckpt, layout):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(ckpt.path)


@pytest.mark.parametrize("family,case", CASES, ids=[f"{f}-{c.replace(' ', '_')}" for f, c in CASES])
def test_the_view_plans_as_transformers_config_does(tiny, tmp_path, monkeypatch, family, case):
    base = _config_case(tiny(family), tmp_path / "base", family, case)
    view = _planned(monkeypatch, base, tmp_path / "a", family)
    reference = _planned(monkeypatch, base, tmp_path / "b", family, reader=_transformers_config)
    if case in ("as saved", "defaults"):  # the family's plain configs must plan, not be refused alike
        assert not isinstance(view, str), view
    if case == TOP_8_OF_4:
        assert isinstance(view, str) and "num_experts_per_tok 8" in view, view
    assert view == reference


def test_variants_do_change_the_plan(tiny, tmp_path, monkeypatch):
    """The variants reach what they vary: a window switched on, or layers without rope, change the plan's
    dimensions (else the comparisons above would compare two default plans)."""
    for family, variants in VARIANTS.items():
        plain = _planned(monkeypatch, tiny(family), tmp_path / f"{family}-plain", family)
        for name, _, _ in variants:
            if name == TOP_8_OF_4:
                continue
            base = _config_case(tiny(family), tmp_path / f"{family}-{name.replace(' ', '_')}", family, name)
            varied = _planned(monkeypatch, base, tmp_path / f"{family}-{name.replace(' ', '_')}-out", family)
            assert not isinstance(varied, str), (family, name, varied)
            assert varied.dims != plain.dims, (family, name)


def test_a_key_the_family_leaves_to_its_class_reads_as_missing():
    """As on transformers' object: getattr with a fallback sees no attribute the config and the family lack."""
    from ropeconv.onnx_export.config import ConfigView

    view = ConfigView({"hidden_size": 8, "attn_config": {"clip_qkv": 2.0}}, {"heads": 2}, {"rms_norm_eps": 1e-5})
    assert view.hidden_size == 8 and view.num_attention_heads == 2 and view.rms_norm_eps == 1e-5
    assert getattr(view, "scale_attn_weights", "absent") == "absent"
    assert view.attn_config.clip_qkv == 2.0 and getattr(view.attn_config, "qk_ln", None) is None
    with pytest.raises(AttributeError):
        view.num_key_value_heads
