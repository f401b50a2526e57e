"""HF → GGUF for the architectures without rope: BLOOM and MPT (ALiBi), GPT-2 (a learned position table).

Tiny random models converted, run in the real llama.cpp and compared with transformers under the same
plan. GPT-2's table is resampled into position_embd (context_length = its rows); a GGUF that keeps the
old rows and repeats the last one fails. ALiBi cannot be scaled in llama.cpp: --method alibi is refused
for GGUF, and --method none (the plain model) is proven, with a non-power-of-two head count to pin the
slope order; the same file without MPT's max_alibi_bias (llama.cpp then applies no bias) fails.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ropeconv.gguf_io.reader import read_gguf
from ropeconv.gguf_io.writer import rewrite_gguf
from tests.conftest import ORIGINAL_CTX, add_byte_level_tokenizer, assert_refused, listing, run_cli

pytest.importorskip("llama_cpp")

FACTOR = 4
TARGET = FACTOR * ORIGINAL_CTX
# config.json of each tiny base, in the family's own key names (hidden 64, 2 layers, 4 heads, context 64)
CONFIGS = {
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=ORIGINAL_CTX)),
    "bloom": ("bloom", dict(hidden_size=64, n_layer=2, n_head=4, seq_length=ORIGINAL_CTX)),
    # non-power-of-two head counts: the slopes interleave past the largest power of two (2^-0.5, 2^-1.5 …)
    "bloom-6heads": ("bloom", dict(hidden_size=96, n_layer=2, n_head=6, seq_length=ORIGINAL_CTX)),
    "mpt": ("mpt", dict(d_model=96, n_layers=2, n_heads=12, max_seq_len=ORIGINAL_CTX,
                        attn_config={"clip_qkv": 1.5})),
    "opt": ("opt", dict(hidden_size=64, ffn_dim=128, word_embed_proj_dim=64, num_attention_heads=4,
                        num_hidden_layers=2, max_position_embeddings=ORIGINAL_CTX)),
}


def make_base(root: Path, name: str) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, kwargs = CONFIGS[name]
    config = AutoConfig.for_model(model_type, vocab_size=512, initializer_range=0.2, bos_token_id=1,
                                  eos_token_id=2, **kwargs)
    torch.manual_seed(0)
    out = root / name
    AutoModelForCausalLM.from_config(config).eval().save_pretrained(out)
    return add_byte_level_tokenizer(out)


def strip_gpt2_prefix(base: Path) -> None:
    """As openai-community/gpt2 ships it: no "transformer." prefix, and the causal-mask buffers saved."""
    from safetensors.torch import load_file, save_file

    path = base / "model.safetensors"
    tensors = {name.removeprefix("transformer."): t for name, t in load_file(path).items()}
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(ORIGINAL_CTX, ORIGINAL_CTX)).view(1, 1, ORIGINAL_CTX,
                                                                                              ORIGINAL_CTX)
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("position-bases")
    out = {name: make_base(root, name) for name in CONFIGS}
    out["gpt2-bare-names"] = make_base(root / "bare", "gpt2")
    strip_gpt2_prefix(out["gpt2-bare-names"])
    return out


@pytest.fixture(scope="module")
def plain(bases, tmp_path_factory):
    """--method none --to gguf of a base, converted once per module: (gguf file, parity record)."""
    root = tmp_path_factory.mktemp("plain-gguf")
    done: dict[str, tuple[Path, dict]] = {}

    def convert(name: str) -> tuple[Path, dict]:
        if name not in done:
            out = root / name
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert run_cli("extend", bases[name], "--method", "none", "--to", "gguf", "--outtype", "f32",
                               "-o", out, "--json", "-q") == 0
            result = json.loads(printed.getvalue())
            done[name] = (out / result["files"][0], result["parity"])
        return done[name]

    return convert


def arch_keys(gguf_file: Path) -> tuple[str, dict]:
    src = read_gguf(gguf_file)
    arch = src.value("general.architecture")
    return arch, {f.key[len(arch) + 1:]: f.value for f in src.fields if f.key.startswith(f"{arch}.")}


def test_gpt2_table_resampled_into_position_embd_matches_and_a_repeated_table_fails(bases, tmp_path, capsys):
    base = bases["gpt2"]
    out = tmp_path / "out"
    assert run_cli("extend", base, "--method", "absolute", "--factor", FACTOR, "--to", "gguf", "--outtype", "f32",
                   "--tokens", TARGET, "-o", out, "--json", "-q") == 0
    result = json.loads(capsys.readouterr().out)
    parity = result["parity"]
    print(f"gpt2 absolute ×{FACTOR}: max|Δlogit| {parity['max_abs_logit']:.3e}")
    assert parity["passed"] and parity["runtime"] == "llama.cpp"
    # beyond the original table, and below context_length (llama.cpp asserts on rows past the table)
    assert 3 * ORIGINAL_CTX // 2 <= parity["last_position"] < TARGET
    gguf_file = out / result["files"][0]
    arch, keys = arch_keys(gguf_file)
    assert arch == "gpt2" and keys["context_length"] == TARGET
    assert not [k for k in keys if k.startswith("rope.")]
    src = read_gguf(gguf_file)
    table = src.tensor("position_embd.weight")
    assert table.torch_shape == (TARGET, 64) and table.ggml_type.name == "F32"

    # the old rows, then the last one repeated: what a converter that only pads the table would ship
    from safetensors import safe_open

    with safe_open(base / "model.safetensors", "np") as f:
        wpe = f.get_tensor("transformer.wpe.weight").astype(np.float32)
    padded = np.concatenate([wpe, np.repeat(wpe[-1:], TARGET - ORIGINAL_CTX, axis=0)])
    bad = tmp_path / "padded.gguf"
    rewrite_gguf(src, bad, add_tensors={"position_embd.weight": padded})
    assert read_gguf(bad).tensor("position_embd.weight").torch_shape == (TARGET, 64)
    assert run_cli("verify", bad, "--base", base, "--tokens", TARGET, "-q") == 1


@pytest.mark.parametrize("name", ["gpt2-bare-names", "bloom", "bloom-6heads", "mpt"])
def test_plain_export_without_interpolation_matches_transformers(plain, name):
    gguf_file, parity = plain(name)
    print(f"{name} none: max|Δlogit| {parity['max_abs_logit']:.3e}")
    assert parity["passed"] and parity["runtime"] == "llama.cpp"
    arch, keys = arch_keys(gguf_file)
    assert keys["context_length"] == ORIGINAL_CTX
    assert not [k for k in keys if k.startswith("rope.")]
    names = {t.name for t in read_gguf(gguf_file).tensors}
    if arch == "gpt2":
        assert "position_embd.weight" in names and "output.weight" not in names  # tied
        assert not [n for n in names if "attn.bias" in n or "masked" in n]
    if arch == "bloom":
        assert {"token_embd_norm.weight", "token_embd_norm.bias", "blk.0.attn_qkv.bias"} <= names
    if arch == "mpt":
        assert keys["attention.max_alibi_bias"] == 8.0 and keys["attention.clamp_kqv"] == 1.5
        assert not [n for n in names if n.endswith(".bias")]  # transformers' MPT has none


@pytest.mark.parametrize("key", ["attention.max_alibi_bias", "attention.clamp_kqv"])
def test_mpt_gguf_without_its_alibi_or_clamp_key_fails(plain, bases, tmp_path, key):
    """llama.cpp's MPT applies ALiBi only with max_alibi_bias in the file, and clamps only with clamp_kqv."""
    gguf_file, _ = plain("mpt")
    bad = tmp_path / "dropped.gguf"
    rewrite_gguf(read_gguf(gguf_file), bad, drop_keys={f"mpt.{key}"})
    assert run_cli("verify", bad, "--base", bases["mpt"], "-q") == 1


@pytest.mark.parametrize("name", ["bloom", "mpt"])
def test_alibi_scaling_to_gguf_is_refused(bases, tmp_path, name, capsys):
    out = tmp_path / "out"
    before = listing(tmp_path)
    rc = run_cli("extend", bases[name], "--method", "alibi", "--factor", FACTOR, "--to", "gguf", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=("llama.cpp", "max_alibi_bias", "--to onnx", "--method none"))


def test_opt_to_gguf_is_refused(bases, tmp_path, capsys):
    out = tmp_path / "out"
    before = listing(tmp_path)
    rc = run_cli("extend", bases["opt"], "--method", "absolute", "--factor", FACTOR, "--to", "gguf", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=("llama.cpp has no OPT", "--to onnx"))


@pytest.mark.parametrize("name,method,mentions", [
    ("gpt2-bare-names", "absolute", ("HF checkpoint",)),
    ("bloom", "alibi", ("max_alibi_bias",)),
    ("mpt", "alibi", ("max_alibi_bias",)),
    ("mpt", "yarn", ("alibi",)),
])
def test_gguf_base_without_rope_is_refused(plain, tmp_path, name, method, mentions, capsys):
    gguf_file, _ = plain(name)
    out = tmp_path / "out.gguf"
    before = listing(tmp_path)
    rc = run_cli("extend", gguf_file, "--method", method, "--factor", 2, "-o", out)
    assert_refused(capsys, rc, out, before, mentions=mentions)
