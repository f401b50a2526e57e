"""Mixture-of-experts families (mixtral, qwen3_moe, qwen2_moe): what is theirs alone — the experts stacked for
llama.cpp, the routing computed in the ONNX graph, the config key transformers 4.x reads — is what the parity
checks see: each broken on purpose fails. (Their rope cells are rows of the per-format matrices.)"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ropeconv.gguf_io.reader import read_gguf
from tests.conftest import ORIGINAL_CTX, add_byte_level_tokenizer, make_tiny, read_json, run_cli

TOKENS = str(4 * ORIGINAL_CTX)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe")
    return {f: add_byte_level_tokenizer(make_tiny(root, f)) for f in ("mixtral", "qwen3_moe", "qwen2_moe")}


def test_gguf_experts_are_stacked_in_expert_order(bases, tmp_path, monkeypatch, capsys):
    """llama.cpp reads expert e as the e-th slice of ffn_*_exps: the same file with the experts in reverse order
    routes every token to other weights, and parity says so."""
    from ropeconv.gguf_export import experts

    out = tmp_path / "out"
    assert run_cli("extend", bases["mixtral"], "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype", "f32",
                   "--tokens", TOKENS, "-o", out, "--json", "-q") == 0
    src = read_gguf(out / json.loads(capsys.readouterr().out)["files"][0])
    shapes = {t.name: tuple(t.shape) for t in src.tensors}
    assert shapes["blk.1.ffn_gate_exps.weight"] == (64, 96, 4) and shapes["blk.1.ffn_down_exps.weight"] == (96, 64, 4)
    assert src.value("llama.expert_count") == 4 and src.value("llama.expert_used_count") == 2
    assert not any(".experts." in name for name in shapes)

    slices = experts.slices
    monkeypatch.setattr(experts, "slices", lambda members, convert: slices(members[::-1], convert))
    assert run_cli("extend", bases["mixtral"], "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype", "f32",
                   "--tokens", TOKENS, "-o", tmp_path / "reversed", "-q") == 1


def test_gguf_routers_stay_float32_and_the_shared_gate_is_a_vector(bases, tmp_path, capsys):
    """As llama.cpp's converter and quantizer keep them: a rounded router picks other experts. The quantized file
    is judged against transformers running its own decoded experts (put back into 5.x's fused expert weights)."""
    out = tmp_path / "out"
    assert run_cli("extend", bases["qwen2_moe"], "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype",
                   "q8_0", "--tokens", TOKENS, "-o", out, "--json", "-q") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parity"]["passed"] and any(b["quantized"] for b in result["parity"]["bands"])
    src = read_gguf(out / result["files"][0])
    kinds = {t.name: (t.ggml_type.name, tuple(t.shape)) for t in src.tensors}
    assert kinds["blk.0.ffn_gate_inp.weight"] == ("F32", (64, 4))
    assert kinds["blk.0.ffn_gate_inp_shexp.weight"] == ("F32", (64,))
    assert kinds["blk.0.ffn_up_exps.weight"][0] == "Q8_0" and kinds["blk.0.ffn_up_shexp.weight"][0] == "Q8_0"
    assert src.value("qwen2moe.expert_feed_forward_length") == 48
    assert src.value("qwen2moe.expert_shared_feed_forward_length") == 80


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_onnx_routing_renormalization_is_what_parity_sees(bases, tmp_path, monkeypatch, family):
    """The graph renormalizes the top-k weights exactly where transformers does (always for mixtral, never for this
    qwen2_moe): the other choice is another model, and parity in onnxruntime fails."""
    from ropeconv.onnx_export import moe

    original = moe.moe_dims
    monkeypatch.setattr(moe, "moe_dims", lambda *a: replace(original(*a), renormalize=not original(*a).renormalize))
    assert run_cli("extend", bases[family], "--method", "yarn", "--factor", "4", "--to", "onnx", "--tokens", TOKENS,
                   "-o", tmp_path / "out", "-q") == 1


def test_qwen3_moe_config_names_its_experts_for_transformers_4x(bases, tmp_path, tf4_python, monkeypatch, capsys):
    """transformers 5 saves qwen3_moe's expert count as num_local_experts only; 4.x reads num_experts (default 128)
    and cannot load the weights. The output writes both (parity/test_tf4 runs its cells in 4.x); without num_experts,
    verify fails in 4.x."""
    from ropeconv.parity import tf4

    assert "num_experts" not in read_json(bases["qwen3_moe"] / "config.json")  # what 5.x saved
    out = tmp_path / "out"
    assert run_cli("extend", bases["qwen3_moe"], "--method", "yarn", "--factor", "4", "-o", out, "--no-verify",
                   "-q") == 0
    config = read_json(out / "config.json")
    assert config["num_experts"] == config["num_local_experts"] == 4
    monkeypatch.setenv(tf4.ENV, str(tf4_python))
    del config["num_experts"]
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert run_cli("verify", out, "--tokens", TOKENS, "-q") == 1
    err = capsys.readouterr().err
    assert "transformers 4." in err and "[128, 64]" in err and "Traceback" not in err, err


def test_qwen3_moe_dense_layers_keep_their_mlp(tmp_path, capsys):
    """mlp_only_layers: the listed layer is a dense MLP in transformers; the shape table expects its tensors there,
    the ONNX graph computes it there, and both outputs are proven (GGUF refuses it: gguf_export/test_convert's BAD)."""
    base = make_tiny(tmp_path, "qwen3_moe", mlp_only_layers=[1])
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "safetensors,onnx",
                   "--tokens", str(2 * ORIGINAL_CTX), "-o", tmp_path / "out", "-q") == 0
    parity = read_json(tmp_path / "out" / "manifest.json")["parity"]
    assert parity["safetensors"]["passed"] and parity["onnx"]["passed"]


def test_qwen3_moe_window_applies_to_every_layer_in_onnx(tmp_path):
    """Qwen3-MoE has no layer_types: with use_sliding_window, transformers masks every layer to the window. A graph
    that windowed no layer failed parity here (max |Δlogit| 9.9 over 96 tokens against a window of 8)."""
    base = make_tiny(tmp_path, "qwen3_moe", use_sliding_window=True, sliding_window=8)
    assert run_cli("extend", base, "--method", "yarn", "--factor", "2", "--to", "onnx", "--tokens",
                   str(3 * ORIGINAL_CTX // 2), "-o", tmp_path / "out", "-q") == 0
    assert read_json(tmp_path / "out" / "manifest.json")["parity"]["onnx"]["passed"]
