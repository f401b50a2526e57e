"""Hostile configs: config.json missing, not JSON, of an unknown architecture, disagreeing with the tensors, of the
wrong kinds for the ONNX plan, with non-finite or out-of-range rope values, nested without bound, or carrying a
rope scaling of its own (refused without --rebase); methods a family cannot take.

The contract for every refusal: exit 2, exactly one `ropeconv: error:` line on stderr, no traceback, nothing
left beside the target (tests.conftest.assert_refused).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ropeconv.errors import InputError
from tests.conftest import (
    add_byte_level_tokenizer,
    assert_refused,
    listing,
    make_tiny,
    read_json,
    run_cli,
)
from tests.hostile.conftest import (
    deep,
    edit_config,
    extend,
    extend_yarn,
    header_of,
    refused_in_place,
    rewrite_header,
    write_header,
)


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("phi3"), "phi3")


# ----------------------------------------------------------------------------- the checkpoint


def test_missing_config_json(capsys, base, out):
    (base / "config.json").unlink()
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("config.json",))


def test_config_json_not_json(capsys, base, out):
    (base / "config.json").write_text('{"model_type": "llama", ')
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("config.json",))


@pytest.mark.parametrize("model_type", ["bert_xyz", None])
def test_unknown_architecture(capsys, base, out, model_type):
    edit_config(base, model_type=model_type)
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("bert_xyz",) if model_type else ("model_type",))


# ----------------------------------------------------------------------------- existing rope scaling


def _add_linear_scaling(base: Path) -> None:
    edit_config(base, rope_scaling={"rope_type": "linear", "factor": 2.0})


def test_existing_rope_scaling_refused_without_rebase(capsys, base, out):
    _add_linear_scaling(base)
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--rebase", "linear"))


def test_existing_rope_scaling_with_rebase(capsys, base, out):
    _add_linear_scaling(base)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--rebase", "-q")
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert listing(out.parent) == [out.name]
    cfg = read_json(out / "config.json")
    assert cfg["rope_parameters"]["rope_type"] == "yarn"
    assert cfg["rope_parameters"]["factor"] == 4.0
    assert (cfg.get("rope_scaling") or {}).get("rope_type") in (None, "yarn")
    assert "linear" not in json.dumps(cfg)


# ----------------------------------------------------------------------------- methods and options


def test_yarn_on_phi3_refused(capsys, tiny_phi3, out):
    before = listing(out.parent)
    rc = extend(tiny_phi3, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("phi3", "yarn"))


@pytest.mark.parametrize("value", ["abc", [64]], ids=["string", "list"])
@pytest.mark.parametrize("command", ["extend", "inspect"])
def test_existing_scaling_original_ctx_not_a_number(capsys, base, out, value, command):
    edit_config(base, rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": value})
    before = listing(out.parent)
    if command == "extend":
        rc = extend(base, out, "--method", "yarn", "--factor", "4", "--rebase", "--no-verify")
    else:
        rc = run_cli("inspect", base)
    assert_refused(capsys, rc, out, before, mentions=("original_max_position_embeddings",))


# ----------------------------------------------------------------------------- 5, 12: config vs tensor index


@pytest.mark.parametrize(
    "changes, args, mentions",
    [
        ({"vocab_size": 1e8}, (), ("vocab_size", "integer")),
        ({"vocab_size": 100_000_000}, (), ("model.embed_tokens.weight", "100000000")),
        ({"head_dim": 2**40}, (), ("q_proj", str(2**42))),
        ({"num_hidden_layers": 1e6}, (), ("num_hidden_layers", "integer")),
        ({"num_hidden_layers": 1_000_000}, (), ("model.layers.2.", "1000000")),
        ({"num_attention_heads": 0}, (), ("num_attention_heads", "at least 1")),
        ({"num_attention_heads": True}, (), ("num_attention_heads", "integer")),
        ({"hidden_size": "64"}, (), ("hidden_size", "integer")),
        ({"intermediate_size": None}, (), ("intermediate_size",)),
        # 4 heads over 3 key/value heads: refused before the first byte of the GGUF (one stderr line)
        ({"num_key_value_heads": 3}, ("--to", "gguf"), ("num_key_value_heads", "multiple")),
        ({"num_hidden_layers": 0}, ("--to", "onnx"), ("num_hidden_layers", "no layers")),
        ({"num_hidden_layers": 0}, (), ("num_hidden_layers",)),
    ],
    ids=["vocab-1e8", "vocab-100M", "head_dim-2**40", "layers-1e6-float", "layers-1e6", "heads-0", "heads-true",
         "hidden-string", "intermediate-null", "kv-heads-3-gguf", "layers-0-onnx", "layers-0"],
)
def test_config_disagreeing_with_the_tensors(capsys, base, out, changes, args, mentions):
    if "gguf" in args:
        add_byte_level_tokenizer(base)  # so --to gguf gets as far as the config
    edit_config(base, **changes)
    before = listing(out.parent)
    assert_refused(capsys, extend_yarn(base, out, *args, "--no-verify"), out, before, mentions=mentions)


@pytest.mark.parametrize(
    "family, changes, mentions",
    [
        ("llama", {"rms_norm_eps": "abc"}, ("config.json", "wrong kind", "'abc'")),
        ("llama", {"hidden_act": ["silu"]}, ("config.json", "wrong kind")),
        ("llama", {"layer_types": ["full_attention"]}, ("1 layer_types", "num_hidden_layers 2")),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": "x", "layer_types": None},
         ("config.json", "wrong kind")),
        ("smollm3", {"no_rope_layers": [1, 0]}, ("2 no_rope_layers", "num_hidden_layers 4")),
    ],
    ids=["eps-string", "activation-list", "layer_types-short", "max_window_layers-string", "no_rope_layers-short"],
)
def test_onnx_config_values_of_the_wrong_kind(capsys, tmp_path, out, family, changes, mentions):
    """The ONNX plan reads config.json through the families' defaults, not transformers' config class, which
    refused these: each is one line, exit 2, nothing written (a traceback before)."""
    base = make_tiny(tmp_path, family)
    edit_config(base, **changes)
    capsys.readouterr()  # transformers' progress bar from saving the tiny model
    before = listing(out.parent)
    assert_refused(capsys, extend_yarn(base, out, "--to", "onnx", "--no-verify"), out, before, mentions=mentions)


def test_verify_checks_the_base_config_before_transformers_loads_it(capsys, base, out):
    assert extend_yarn(base, out, "--no-verify", "-q") == 0
    edit_config(base, vocab_size=1024)  # the base changed after the run: transformers would size from it
    capsys.readouterr()
    refused_in_place(capsys, run_cli("verify", out, "-q", "--device", "cpu"), "model.embed_tokens.weight", "1024")


# ----------------------------------------------------------------------------- 8: nesting, and wrong types


@pytest.mark.parametrize("where", ["config.json", "safetensors-header", "index", "recipe"])
def test_deep_nesting_refused(capsys, base, out, tmp_path, where):
    if where == "config.json":
        text = (base / "config.json").read_text()
        (base / "config.json").write_text(text.rstrip()[:-1] + f', "x": {deep(100_000)}}}')
    elif where == "safetensors-header":
        header, data = header_of(base / "model.safetensors")
        text = json.dumps(header, separators=(",", ":"))
        write_header(base / "model.safetensors", (text[:-1] + f',"x":{deep(100_000)}}}').encode(), data)
    elif where == "index":
        (base / "model.safetensors.index.json").write_text('{"weight_map": {}, "x": ' + deep(100_000) + "}")
    before = listing(out.parent)
    if where == "recipe":
        recipe = tmp_path / "deep.yaml"
        recipe.write_text(f"base: {base}\nmethod: {{name: yarn, factor: {deep(5000)}}}\nout: {out}\n")
        rc = run_cli("recipe", "run", recipe)
    else:
        rc = extend_yarn(base, out, "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("nested",))


@pytest.mark.parametrize("case", ["model_type", "rope_type", "dtype"])
def test_list_where_a_string_belongs(capsys, base, out, case):
    if case == "model_type":
        edit_config(base, model_type=["llama"])
    elif case == "rope_type":
        edit_config(base, rope_scaling={"rope_type": ["yarn"], "factor": 2.0})
    else:
        rewrite_header(base / "model.safetensors",
                       lambda h: h["model.norm.weight"].update(dtype=["F32"]))
    before = listing(out.parent)
    assert_refused(capsys, extend_yarn(base, out, "--rebase", "--no-verify"), out, before, mentions=(case,))


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_non_finite_rope_theta_refused(capsys, base, out, literal):
    text = (base / "config.json").read_text()
    (base / "config.json").write_text(text.rstrip()[:-1] + f', "rope_theta": {literal}}}')
    before = listing(out.parent)
    assert_refused(capsys, extend_yarn(base, out), out, before, mentions=("rope_theta", literal))


@pytest.mark.parametrize("theta", [-1, 0, 1, "10000", True])
def test_out_of_range_rope_theta_refused(capsys, base, out, theta):
    cfg = read_json(base / "config.json")
    for where in (cfg, cfg.get("rope_parameters") or {}):
        where["rope_theta"] = theta
    (base / "config.json").write_text(json.dumps(cfg))
    before = listing(out.parent)
    assert_refused(capsys, extend_yarn(base, out, "--no-verify"), out, before, mentions=("rope",))


@pytest.mark.parametrize("lists", [1, 2, 63, 64, 65, 66])
def test_nesting_is_refused_at_the_same_depth_through_lists_of_plain_values(lists):
    """check_tree passes over a container of plain leaves without walking it (a tokenizer's vocabulary and merges
    cost 0.2-0.5 s walked node by node); nesting beyond MAX_DEPTH must still be refused exactly where it was: a
    chain of `lists` lists whose innermost holds strings has its innermost container at depth lists - 1."""
    from ropeconv import jsontext

    data: object = ["a", "b"]
    for _ in range(lists - 1):
        data = [data, "x"]
    text = json.dumps({"merges": data})  # the object adds one level
    if lists >= jsontext.MAX_DEPTH:  # innermost list at depth `lists` (object at 0) must be < MAX_DEPTH
        with pytest.raises(InputError, match="nested more than"):
            jsontext.loads(text, "tokenizer.json")
    else:
        assert jsontext.loads(text, "tokenizer.json") == {"merges": data}
    with pytest.raises(InputError, match="not a finite number"):  # a float is never a plain leaf
        jsontext.loads(json.dumps({"scores": [[0.5, 1.0]] * 3 + [[1.0, "NaN"]]}).replace('"NaN"', "NaN"), "t.json")
