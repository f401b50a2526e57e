"""Each family states transformers' config class defaults of the keys the exporters read (Family.config_defaults),
so that planning imports no transformers. The ONNX plan reads config.json through a view of them
(onnx_export/config.py): every family's plan is made twice, once through that view and once through transformers' own
config object, over configs as transformers saves them, configs that omit every key whose default the family states
(so the class defaults and the derived keys decide), and the variants whose derived keys differ (sliding windows
switched on, NoPE every other layer, Gemma 3's older pattern key): the two plans must be equal, dimensions,
windows, initializers and all. The GGUF plan fills in the plain defaults: its header from a config omitting them
must equal its header from the config transformers completes (its own to_dict).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ropeconv.families import FAMILIES, GGUF_LAYOUTS, ONNX_LAYOUTS
from tests.conftest import add_byte_level_tokenizer, make_tiny, run_cli

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
        config = _without_defaults(config, family)
    elif case != "as saved":
        _, set_keys, dropped = next(v for v in VARIANTS[family] if v[0] == case)
        for key in dropped:
            config.pop(key, None)
        config.update(set_keys)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _without_defaults(config: dict, family: str) -> dict:
    dropped = {k for k, _ in FAMILIES[family].config_defaults} | set(DROPPED)
    return {k: v for k, v in config.items() if k not in dropped} | KEEP.get(family, {})


def _dry_run_plan(monkeypatch, module, name: str, argv: list, patches=()):
    """What `module.name` (a format's planning function) returned in a dry run of argv, or the refusal it raised
    (the exception's text); patches: (object, attribute, value) set during the run."""
    seen = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        try:
            made = real(*args, **kwargs)
        except Exception as exc:
            seen.append(f"refused: {exc}")
            raise
        seen.append(made)
        return made

    with monkeypatch.context() as m:
        m.setattr(module, name, spy)
        for target, attribute, value in patches:
            m.setattr(target, attribute, value)
        run_cli("extend", *argv, "--dry-run")
    assert len(seen) == 1, f"the dry run of {argv} made no plan"
    return seen[0]


def _planned(monkeypatch, base: Path, out: Path, family: str, reader=None):
    """The ONNX plan a dry run made, or the refusal it raised; reader: in place of the view."""
    from ropeconv.onnx_export import output
    from ropeconv.onnx_export import plan as plan_module

    return _dry_run_plan(monkeypatch, output, "plan_onnx",
                         [base, "--method", METHOD[FAMILIES[family].position], "--factor", "2", "--to", "onnx", "-o",
                          out], [(plan_module, "config_view", reader)] if reader else ())


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
        view.num_key_value_heads  # noqa: B018 - the attribute read is the test


def _gguf_header(monkeypatch, base: Path, out: Path) -> str | list:
    """The header fields a GGUF dry run planned (less the name, tokenizer and base path ones) and its tensors, or its
    refusal."""
    from ropeconv.gguf_export import output

    made = _dry_run_plan(monkeypatch, output, "plan_gguf", [base, "--method", "none", "--to", "gguf", "-o", out])
    if isinstance(made, str):
        return made
    return sorted((f.key, repr(f.value)) for f in made.fields
                  if not f.key.startswith(("general.", "tokenizer.", "ropeconv.base"))) + \
        [t.info.name for t in made.tensors]


# Gemma 2/3 without query_pre_attn_scalar take the class's 256, not the tiny head_dim 16: refused for GGUF (below)
GGUF_KEEP = {"gemma2": dict(query_pre_attn_scalar=16), "gemma3_text": dict(query_pre_attn_scalar=16)}


@pytest.mark.parametrize("family", list(GGUF_LAYOUTS))
def test_gguf_header_takes_the_class_defaults(tiny, tmp_path, monkeypatch, family):
    """A config.json that omits the keys a family states defaults for converts as transformers reads it: the same
    header as from the config transformers itself completes. (Before, the GGUF layout's own fallbacks decided:
    rms_norm_eps 1e-6 for Mixtral, OLMo 2 and Phi-3, whose classes default to 1e-5.)"""
    from transformers import AutoConfig

    base = add_byte_level_tokenizer(_config_case(tiny(family), tmp_path / "base", family, "defaults"))
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(config | GGUF_KEEP.get(family, {})))
    completed = _config_case(base, tmp_path / "completed", family, "as saved")
    (completed / "config.json").write_text(json.dumps(AutoConfig.from_pretrained(base).to_dict()))
    ours = _gguf_header(monkeypatch, base, tmp_path / "a")
    theirs = _gguf_header(monkeypatch, completed, tmp_path / "b")
    assert not isinstance(ours, str), ours
    assert ours == theirs


def test_gguf_refuses_gemma2_by_its_class_query_scalar(tiny, tmp_path, monkeypatch):
    """Gemma 2 without query_pre_attn_scalar scales queries by 256^-1/2 in transformers (its class default) while
    llama.cpp scales by head_dim^-1/2: with a head_dim of 16 that is another model, refused (it converted before,
    the check reading head_dim as the default)."""
    base = add_byte_level_tokenizer(_config_case(tiny("gemma2"), tmp_path / "base", "gemma2", "defaults"))
    refused = _gguf_header(monkeypatch, base, tmp_path / "out")
    assert isinstance(refused, str) and "query_pre_attn_scalar 256" in refused, refused



def test_every_key_the_graph_reads_without_a_fallback_has_a_default():
    """The ONNX plan reads these layout keys as attributes with no fallback: a config.json that omits one takes the
    family's stated default (as transformers' class would), so each ONNX family must state one — a new family that
    forgot would otherwise plan from transformers' default only when config.json happens to carry the key."""
    missing = []
    for family, layout in ONNX_LAYOUTS.items():
        stated = {k for k, _ in FAMILIES[family].config_defaults}
        needed = {layout.eps_key, layout.parallel_residual_key, layout.residual_norm_key, layout.post_norm_key,
                  layout.query_scalar_key, layout.rope_layers_key} - {None}
        if not layout.fixed_activation:
            needed.add(layout.activation_key)
        missing += [f"{family}: {key}" for key in sorted(needed - stated)]
    assert not missing, missing
