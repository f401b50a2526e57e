"""Config values a family's transformers config class or llama.cpp's loader would reject, or that make the math
undefined, are refused in one line before the first byte (checkpoint/config_values.py, from each family's typed
description, Family.values): the cases an adversarial pass found (each a crash, a traceback or a published output
failing its own verify before), and a property test that mutates every numeric field of every family record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ropeconv.checkpoint.config_values import described
from ropeconv.families import FAMILIES
from ropeconv.families.spec import BOOL, FLOAT, INT, STR
from tests.conftest import add_byte_level_tokenizer, assert_refused, listing, make_tiny, run_cli

METHOD = {"rope": "yarn", "alibi": "alibi", "absolute": "absolute"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family → its tiny checkpoint with a byte-level tokenizer (so that the GGUF plan gets as far as the config),
    built once for the module; read only: a case links its weights under a config.json of its own."""
    root = tmp_path_factory.mktemp("config-values")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = add_byte_level_tokenizer(make_tiny(root, family))
        return built[family]
    return get


class Omitted:
    def __repr__(self) -> str:
        return "omitted"


OMITTED = Omitted()  # a change that drops the key: the class default decides


def with_config(base: Path, dst: Path, **changes) -> Path:
    """A copy of the tiny checkpoint (its files linked) under config.json with `changes`."""
    dst.mkdir()
    for item in base.iterdir():
        if item.name != "config.json":
            (dst / item.name).symlink_to(item)
    config = json.loads((base / "config.json").read_text())
    config.update({k: v for k, v in changes.items() if v is not OMITTED})
    for key in [k for k, v in changes.items() if v is OMITTED]:
        config.pop(key)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def extend(base: Path, out: Path, *args) -> int:
    method = METHOD[FAMILIES[json.loads((base / "config.json").read_text())["model_type"]].position]
    return run_cli("extend", base, "--method", method, "--factor", "2", *args, "-o", out)


# ------------------------------------------------------------------------------ the typed description

KINDS = {int: INT, float: FLOAT, bool: BOOL, str: STR}


def annotation(family: str, key: str):
    """(kind, takes null, a list) of transformers 5's annotation of the key on the family's config class; None
    where the class has no such field (a legacy key it reads from its kwargs)."""
    import types
    import typing

    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[family]
    hints = {}
    for klass in reversed(cls.__mro__):
        hints.update(getattr(klass, "__annotations__", {}))
    hint = hints.get(cls.attribute_map.get(key, key))
    if hint is None:
        return None
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    null = type(None) in args
    (main,) = [a for a in args if a is not type(None)]
    is_list = typing.get_origin(main) is list
    return KINDS[typing.get_args(main)[0] if is_list else main], null, is_list


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_value_is_typed_as_transformers_config_class_annotates_it(family):
    """The typed description is transformers' own (5.x's strict classes refuse any other type): a family record
    that typed a key otherwise would refuse what transformers takes, or take what it refuses."""
    checked = 0
    for value in FAMILIES[family].values:
        found = annotation(family, value.key)
        if found is None:
            continue
        assert found == (value.kind, value.null, value.per_layer or value.listed), \
            f"{family}.{value.key}: {value} but transformers annotates {found}"
        checked += 1
    assert checked >= 2, f"{family}: no value of the record is a field of transformers' class"


def test_a_default_without_a_typed_value_is_a_developer_error():
    from dataclasses import replace

    from ropeconv.families import FamilyError, check_family

    llama = FAMILIES["llama"]
    with pytest.raises(FamilyError, match="'rms_norm_eps' but no Value"):
        check_family(replace(llama, values=tuple(v for v in llama.values if v.key != "rms_norm_eps")), "llama.py")


# ---------------------------------------------------------------------------------- the cases found


CASES = [
    # llama.cpp's GGML_ASSERT(eps >= 0.0f) aborted extend's parity and verify (exit 134)
    ("qwen3", {"rms_norm_eps": -1e-6}, ("rms_norm_eps", "out of range", "llama.cpp asserts")),
    ("qwen3", {"rms_norm_eps": 0}, ("rms_norm_eps", "wrong kind", "a float")),  # transformers 5: no int for a float
    ("qwen3", {"rms_norm_eps": 0.0}, ("rms_norm_eps", "out of range")),
    ("qwen3", {"rms_norm_eps": "x"}, ("rms_norm_eps", "wrong kind", "'x'")),
    ("qwen3", {"rms_norm_eps": 1e308}, ("rms_norm_eps", "out of range")),  # no float32 holds it
    ("qwen3_moe", {"num_experts_per_tok": [2]}, ("num_experts_per_tok", "wrong kind", "an integer")),
    ("qwen3_moe", {"num_experts_per_tok": 5}, ("num_experts_per_tok", "experts (4)")),
    ("qwen3_moe", {"num_experts_per_tok": 0}, ("num_experts_per_tok", "out of range")),
    ("qwen3_moe", {"norm_topk_prob": None}, ("norm_topk_prob", "true or false")),
    ("qwen3_moe", {"norm_topk_prob": "yes"}, ("norm_topk_prob", "true or false")),
    ("qwen3_moe", {"norm_topk_prob": 1}, ("norm_topk_prob", "true or false")),
    ("smollm3", {"no_rope_layer_interval": 0}, ("no_rope_layer_interval", "out of range")),  # a modulo by zero
    ("smollm3", {"no_rope_layers": True}, ("no_rope_layers", "wrong kind", "a list")),
    ("smollm3", {"no_rope_layers": [1, 1, 1, 2]}, ("no_rope_layers", "out of range")),
    ("smollm3", {"no_rope_layers": [1, 1, 1, False]}, ("no_rope_layers", "wrong kind")),
    # transformers' rope takes the null as the base (TypeError in its forward)
    ("gemma3_text", {"rope_parameters": None, "rope_theta": 10000.0, "rope_local_base_freq": None},
     ("sliding_attention rope base",)),
    ("gemma3_text", {"rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": None},
                                         "full_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
     ("sliding_attention rope base",)),
    ("gemma3_text", {"sliding_window_pattern": 0, "layer_types": None}, ("sliding_window_pattern", "out of range")),
    ("gemma3_text", {"query_pre_attn_scalar": 16.0}, ("query_pre_attn_scalar", "wrong kind")),
    # transformers' qwen3 rotates the whole head whatever the factor says; ropeconv rotated half of it
    ("qwen3", {"partial_rotary_factor": 0.5}, ("partial_rotary_factor", "whole head")),
    ("llama", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}},
     ("partial_rotary_factor", "whole head")),
    # transformers' sliding cache keeps sliding_window − 1 keys: at 1, [-0:] keeps them all (GGUF and ONNX failed
    # their own verify under --no-verify)
    ("gemma3_text", {"sliding_window": 1}, ("sliding_window", "out of range", "sliding_window − 1")),
    ("mistral", {"sliding_window": 1}, ("sliding_window", "out of range")),
    # an original context of 1 published a GGUF off by 2.9 in its own verify
    ("qwen3", {"max_position_embeddings": 1}, ("max_position_embeddings", "≥ 8")),
    ("llama", {"tie_word_embeddings": "false"}, ("tie_word_embeddings", "true or false")),
    # a rope value stated twice, differently: transformers 4.x reads the top-level key, 5.x the rope dict
    ("llama", {"rope_theta": 0}, ("rope_theta 0", "rope_parameters.rope_theta 10000.0", "disagree")),
    ("gemma3_text", {"rope_local_base_freq": 10000.0},
     ("rope_local_base_freq 10000.0", "rope_parameters.sliding_attention.rope_theta 500.0", "disagree")),
    ("gpt_neox", {"rotary_pct": 0.5}, ("rotary_pct 0.5", "partial_rotary_factor 0.25", "disagree")),
    ("phi3", {"partial_rotary_factor": True}, ("partial_rotary_factor True", "disagree")),
    # a dimension no dense layer of this model uses, beyond what llama.cpp's u32 and int32 positions hold
    ("qwen3_moe", {"intermediate_size": 10**30}, ("intermediate_size", "out of range")),
    # the shapes read num_experts and the GGUF plan num_local_experts first: 10**30 experts exhausted memory (OOM)
    ("qwen2_moe", {"num_local_experts": 10**30}, ("num_experts 4", "num_local_experts 1000", "disagree")),
    ("gpt2", {"layer_norm_epsilon": -1e-5}, ("layer_norm_epsilon", "out of range")),
]


@pytest.mark.parametrize("family, changes, mentions", CASES,
                         ids=[f"{f}-{'-'.join(f'{k}={v!r}'[:40] for k, v in c.items())}" for f, c, _ in CASES])
def test_config_value_refused_before_the_first_byte(capsys, tiny, tmp_path, family, changes, mentions):
    base = with_config(tiny(family), tmp_path / "base", **changes)
    out = tmp_path / "out" / "extended"
    out.parent.mkdir()
    before = listing(tmp_path / "base"), (tmp_path / "base" / "config.json").read_bytes()
    capsys.readouterr()
    assert_refused(capsys, extend(base, out, "--to", "safetensors,gguf,onnx" if FAMILIES[family].gguf
                                  else "safetensors,onnx", "--no-verify"), out, [], mentions=mentions)
    assert (listing(tmp_path / "base"), (tmp_path / "base" / "config.json").read_bytes()) == before


def test_gguf_refuses_a_class_default_llama_cpp_aborts_on(capsys, tiny, tmp_path):
    """Without num_experts_per_tok, Qwen3-MoE's class takes its top 8 of the 4 experts: the GGUF stated
    expert_used_count 8, which llama.cpp's loader aborts on (GGML_ASSERT(n_expert_used <= n_expert))."""
    base = with_config(tiny("qwen3_moe"), tmp_path / "base", num_experts_per_tok=OMITTED)
    out = tmp_path / "out" / "extended"
    out.parent.mkdir()
    capsys.readouterr()  # transformers' progress bar from saving the tiny model
    assert_refused(capsys, extend(base, out, "--to", "gguf", "--no-verify"), out, [],
                   mentions=("omits num_experts_per_tok", "default 8", "experts (4)", "llama.cpp asserts"))


@pytest.mark.parametrize("value", [-1e-6, 0.0])
def test_gguf_base_with_a_norm_epsilon_llama_cpp_aborts_on_is_refused(capsys, tiny_yarn_gguf, tmp_path, value):
    """A GGUF base states its epsilon itself: a negative one aborted llama.cpp (GGML_ASSERT(eps >= 0.0f), exit 134)
    in extend's parity; under --no-verify it was published."""
    import struct

    raw = bytearray(tiny_yarn_gguf.read_bytes())
    key = b"llama.attention.layer_norm_rms_epsilon"
    at = raw.index(key) + len(key)
    assert struct.unpack_from("<I", raw, at)[0] == 6  # GGUF's FLOAT32, then the value
    struct.pack_into("<f", raw, at + 4, value)
    base = tmp_path / "base.gguf"
    base.write_bytes(bytes(raw))
    out = tmp_path / "out.gguf"
    before = listing(tmp_path)
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--rebase", "--no-verify", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=("layer_norm_rms_epsilon", "> 0"))
    assert base.read_bytes() == raw


def test_verify_of_a_gguf_whose_epsilon_llama_cpp_aborts_on_is_refused_before_loading(tiny_yarn_gguf, tmp_path):
    """verify loads the artifact in llama.cpp: a negative epsilon written into an output GGUF aborted the process
    there (exit 134, with gdb's backtrace on stdout). Run as a subprocess: an abort must not take pytest with it."""
    import struct
    import subprocess
    import sys

    raw = bytearray(tiny_yarn_gguf.read_bytes())
    key = b"llama.attention.layer_norm_rms_epsilon"
    at = raw.index(key) + len(key)
    struct.pack_into("<f", raw, at + 4, -1e-6)
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(bytes(raw))
    done = subprocess.run([sys.executable, "-m", "ropeconv.cli.main", "verify", str(damaged), "--base",
                           str(tiny_yarn_gguf.parent.parent / "base"), "--tokens", "64", "-q"],
                          capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1 and "layer_norm_rms_epsilon" in lines[0] and "Traceback" not in done.stderr, done.stderr


# ------------------------------------------------------------------ the property: refused or accepted alike

MUTATIONS = {"zero": 0, "zero-float": 0.0, "negative": -1, "negative-float": -1e-6, "bool": True, "string": "1",
             "list": [1], "huge-float": 1e308, "huge-int": 10**30}


def numeric_fields(family: str) -> list[str]:
    """Every numeric key the family record names: its typed values and dimensions, and its position keys."""
    f = FAMILIES[family]
    keys = [v.key for v in described(f) if v.kind in (INT, FLOAT)]
    if f.position == "rope":
        keys += [f.arch.theta_key] + ([f.arch.partial_key] if f.arch.partial_key else [])
        keys += [key for _, key, _ in f.arch.fixed_layer_bases]
    return list(dict.fromkeys(keys))


def transformers_accepts(family: str, config: dict) -> str | None:
    """None when transformers' own config class takes the config, else why not."""
    from transformers import AutoConfig

    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    try:
        AutoConfig.for_model(family, **kwargs)
    except Exception as exc:  # the strict classes raise TypeError, ValueError, StrictDataclass…Error, ZeroDivisionError
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    return None


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_numeric_field_mutated_is_refused_or_taken_by_transformers(capsys, tiny, tmp_path, family):
    """Each numeric field of the family record set to zero, negative, a bool, a string, a list and huge: the dry run
    either refuses it in one line (exit 2) or plans every format AND transformers' config class takes the config
    (a value transformers rejects would crash parity, or publish under --no-verify what verify cannot load)."""
    base = tiny(family)
    config = json.loads((base / "config.json").read_text())
    # every format the family's own config plans to with its method (not GGUF for ALiBi, nor safetensors for OLMo 2's
    # YaRN): the mutations must reach each plan, so the unmutated config must plan
    formats = ",".join(f for f in ("safetensors", "gguf", "onnx")
                       if extend(base, tmp_path / "out", "--to", f, "--dry-run") == 0)
    assert len(formats.split(",")) >= 2, capsys.readouterr().err
    wrong = []
    for key in numeric_fields(family):
        for name, value in MUTATIONS.items():
            case = tmp_path / f"{key}-{name}"
            with_config(base, case, **{key: value})
            capsys.readouterr()
            try:
                rc = extend(case, tmp_path / "out", "--to", formats, "--dry-run")
            except Exception as exc:  # the CLI let it through: a traceback
                wrong.append(f"{key}={value!r}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            err = capsys.readouterr().err
            lines = err.splitlines()
            if rc == 2:
                if len(lines) != 1 or not lines[0].startswith("ropeconv: error: ") or "Traceback" in err:
                    wrong.append(f"{key}={value!r}: refused, but not in one line: {err[:300]!r}")
                continue
            if rc != 0:
                wrong.append(f"{key}={value!r}: exit {rc}: {err[:300]!r}")
                continue
            rejected = transformers_accepts(family, dict(config, **{key: value}))
            if rejected:
                wrong.append(f"{key}={value!r}: planned, but transformers' config class rejects it ({rejected})")
    assert not wrong, f"{len(wrong)} mutations of {family}:\n" + "\n".join(wrong)


# ------------------------------------------------------------------------- accepted, then proven end to end

ACCEPTED = [
    # llama.cpp's gemma3 loader read the window as sliding layers in its default pattern (5 of 6) when no layer
    # slides: the GGUF was off by 6.48 in its own verify; it now states no window
    ("gemma3_text", {"layer_types": ["full_attention", "full_attention"]}, "gguf"),
    # the shortest original context taken, through YaRN's correction range in llama.cpp
    ("qwen3", {"max_position_embeddings": 8}, "gguf"),
    # the shortest window taken, on every layer
    ("mistral", {"sliding_window": 2}, "safetensors,onnx"),
    # no layer windowed: the boundary of max_window_layers
    ("qwen3", {"max_window_layers": 0}, "safetensors,gguf"),
]


@pytest.mark.parametrize("family, changes, formats", ACCEPTED,
                         ids=[f"{f}-{'-'.join(f'{k}={v!r}'[:40] for k, v in c.items())}" for f, c, _ in ACCEPTED])
def test_accepted_values_are_published_verified(capsys, tiny, tmp_path, family, changes, formats):
    base = with_config(tiny(family), tmp_path / "base", **changes)
    # with parity on: each output proven in its runtime before it is published (exit 1 otherwise)
    assert extend(base, tmp_path / "out", "--to", formats, "-q", "--device", "cpu") == 0, capsys.readouterr().err
