"""The GGUF conversion's numpy path (casts and q/k/qkv row reorders on the file's bytes, no torch) against
independent references: torch's own casts, the rotary-pair and fused-qkv reorders written out here as index
arithmetic from llama.cpp's converter's definition, and gguf-py's reader on the output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from safetensors.torch import load_file, save_file

from ropeconv.errors import UnsupportedError
from ropeconv.gguf_export import convert, numpy_cast
from ropeconv.gguf_export.numpy_cast import bf16_to_f16, float32_to_float16
from tests.conftest import add_byte_level_tokenizer, make_tiny, run_cli

HEADS, HEADS_KV, LAYERS = 4, 2, 2


def torch_bits(x: torch.Tensor) -> np.ndarray:
    return x.contiguous().view(torch.int16 if x.element_size() == 2 else torch.int32).numpy().view(
        np.uint16 if x.element_size() == 2 else np.uint32)


def test_bf16_to_f16_is_torchs_cast_on_every_bit_pattern():
    every = np.arange(1 << 16, dtype=np.uint16)
    magnitude = every & 0x7FFF
    castable = every[(magnitude < 0x4780) | (magnitude >= 0x7F80)]  # beyond ±65504 (not inf/nan) is refused
    expected = torch_bits(torch.from_numpy(castable.view(np.int16).copy()).view(torch.bfloat16).to(torch.float16))
    # the fast path (word-wise passes and the fix-up table) and the table itself; odd lengths and offsets put
    # patterns in both half words and in the odd tail
    for lo, hi in ((0, None), (1, None), (3, 8), (5, 6)):
        got = bf16_to_f16(castable[lo:hi], "w").view(np.uint16)
        want = expected[lo:hi]
        assert np.array_equal(got, want), f"{int((got != want).sum())} of {got.size} differ"
    table = numpy_cast._fix_up_table()
    assert np.array_equal(table[castable], expected)


def test_float16_overflow_is_refused_as_torch_path_does():
    big = torch.tensor([1.0, 70000.0]).to(torch.bfloat16)
    with pytest.raises(UnsupportedError, match="beyond float16's range"):
        bf16_to_f16(torch_bits(big), "w")
    # every finite pattern that rounds to a float16 inf, either sign, alone or amid values, at either half word
    every = np.arange(1 << 16, dtype=np.uint16)
    magnitude = every & 0x7FFF
    overflowing = every[(magnitude >= 0x4780) & (magnitude < 0x7F80)]
    assert np.isinf(torch.from_numpy(overflowing.view(np.int16).copy()).view(torch.bfloat16).to(torch.float16)).all()
    for pattern in overflowing[:: 97].tolist() + [0x4780, 0xC780, 0x7F7F, 0xFF7F]:
        for at in (0, 1, 2):
            bits = np.full(3, 0x3F80, np.uint16)
            bits[at] = pattern
            with pytest.raises(UnsupportedError, match="beyond float16's range"):
                bf16_to_f16(bits, "w")
    with pytest.raises(UnsupportedError, match="beyond float16's range"):
        float32_to_float16(np.array([65520.0], np.float32), "w")  # rounds up to inf
    # an inf already in the source is kept, not refused
    assert np.isinf(float32_to_float16(np.array([np.inf, 1.0], np.float32), "w")).sum() == 1


def test_float32_to_float16_is_torchs_cast():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(1 << 16) * s for s in (1e-7, 1e-5, 0.02, 1.0, 1e4)]).astype(np.float32)
    x = x[np.abs(x) < 65504]  # the rest is refused (test above)
    expected = torch_bits(torch.from_numpy(x).to(torch.float16))
    assert np.array_equal(float32_to_float16(x, "w").view(np.uint16), expected)


def pairs_order(rows: int, heads: int) -> np.ndarray:
    """llama.cpp's converter: each head's row 2i is its HF row i, row 2i+1 its row i + d/2."""
    d = rows // heads
    return np.array([h * d + (j // 2) + (j % 2) * (d // 2) for h in range(heads) for j in range(d)])


def qkv_order(rows: int, heads: int) -> np.ndarray:
    """GPT-NeoX's per-head [q_h; k_h; v_h] ─► all q, all k, all v."""
    per = rows // heads // 3
    return np.array([(h * 3 + part) * per + r for part in range(3) for h in range(heads) for r in range(per)])


LLAMA = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
         "model.norm.weight": "output_norm.weight"}
LLAMA_LAYER = {"self_attn.q_proj": ("attn_q", "q"), "self_attn.k_proj": ("attn_k", "k"),
               "self_attn.v_proj": ("attn_v", None), "self_attn.o_proj": ("attn_output", None),
               "mlp.gate_proj": ("ffn_gate", None), "mlp.up_proj": ("ffn_up", None), "mlp.down_proj": ("ffn_down", None),
               "input_layernorm": ("attn_norm", None), "post_attention_layernorm": ("ffn_norm", None)}
NEOX = {"gpt_neox.embed_in.weight": "token_embd.weight", "embed_out.weight": "output.weight",
        "gpt_neox.final_layer_norm.weight": "output_norm.weight", "gpt_neox.final_layer_norm.bias": "output_norm.bias"}
NEOX_LAYER = {"attention.query_key_value": ("attn_qkv", "qkv"), "attention.dense": ("attn_output", None),
              "mlp.dense_h_to_4h": ("ffn_up", None), "mlp.dense_4h_to_h": ("ffn_down", None),
              "input_layernorm": ("attn_norm", None), "post_attention_layernorm": ("ffn_norm", None)}


def expected_tensors(tensors: dict[str, torch.Tensor], family: str) -> dict[str, tuple[torch.Tensor, str | None]]:
    top, per_layer, prefix = (LLAMA, LLAMA_LAYER, "model.layers") if family == "llama" else \
        (NEOX, NEOX_LAYER, "gpt_neox.layers")
    out = {gguf: (tensors[hf], None) for hf, gguf in top.items()}
    for i in range(LAYERS):
        for hf, (gguf, reorder) in per_layer.items():
            for suffix in ("weight", "bias"):
                name = f"{prefix}.{i}.{hf}.{suffix}"
                if name in tensors:
                    out[f"blk.{i}.{gguf}.{suffix}"] = (tensors[name], reorder)
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("numpy-path")
    made = {}
    for family, extra in (("llama", {"attention_bias": True}), ("gpt_neox", {})):
        base = add_byte_level_tokenizer(make_tiny(root, family, **extra))
        for dtype in (torch.float16, torch.bfloat16):
            copy = root / f"{family}-{str(dtype).removeprefix('torch.')}"
            copy.mkdir()
            for f in base.iterdir():
                (copy / f.name).write_bytes(f.read_bytes())
            tensors = {k: v.to(dtype) for k, v in load_file(base / "model.safetensors").items()}
            save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
            made[(family, dtype)] = copy
    return made


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("outtype", ["f16", "f32"])
def test_converted_tensors_are_the_torch_cast_of_the_reordered_source(bases, tmp_path, monkeypatch, family, dtype,
                                                                     outtype):
    base = bases[(family, dtype)]
    # reads of 3 rows of 64 half floats: chunks split plain tensors and group whole heads of pairs
    monkeypatch.setattr(convert, "READ_CHUNK_BYTES", 3 * 64 * 2)
    for torch_path in ("_convert", "_cast_chunks"):  # every tensor here is the numpy path's (or a byte copy)
        monkeypatch.setattr(convert.GgufConversion, torch_path,
                            lambda *a, name=torch_path: pytest.fail(f"{name} used"))
    out = tmp_path / "out"
    assert run_cli("extend", base, "--method", "linear", "--factor", "2", "--to", "gguf", "--outtype", outtype,
                   "--no-verify", "-q", "-o", out) == 0
    reader = GGUFReader(next(out.glob("*.gguf")))
    got = {t.name: t for t in reader.tensors}
    expected = expected_tensors(load_file(base / "model.safetensors"), family)
    assert expected.keys() <= got.keys()
    for name, (source, reorder) in expected.items():
        rows = source.shape[0]
        if reorder == "q":
            source = source[pairs_order(rows, HEADS)]
        elif reorder == "k":
            source = source[pairs_order(rows, HEADS_KV)]
        elif reorder == "qkv":
            source = source[qkv_order(rows, HEADS)]
        want = source.to(torch.float32 if source.dim() == 1 or outtype == "f32" else torch.float16)
        data = np.asarray(got[name].data).reshape(tuple(want.shape))
        assert np.array_equal(data.view(np.uint8), want.numpy().view(np.uint8)), name


def test_array_fields_pack_as_item_by_item():
    """A vocabulary's arrays are packed in one call each: the same bytes as packing every item alone, and an
    item that does not fit is still refused by name."""
    from gguf import GGUFValueType as T

    from ropeconv.errors import InputError
    from ropeconv.gguf_io.fields import NewField, _pack_value

    cases = [(T.STRING, ["a", "", "ключ", "\udcff raw byte", "[PAD7]"]), (T.FLOAT32, [0.0, -1000.0, 1.5, 3, 1e-40]),
             (T.INT32, [0, 1, -(2**31), 2**31 - 1]), (T.UINT32, []), (T.FLOAT32, [np.float32(2.5), 1.0])]
    for item_type, values in cases:
        packed = NewField("k", T.ARRAY, values, item_type).pack()
        by_item = b"".join(_pack_value("k", item_type, v) for v in values)
        head = 8 + 1 + 4 + 4 + 8  # key length and key, ARRAY, item type, count
        assert packed[head:] == by_item, item_type
    for item_type, values in ((T.INT32, [1, 2**31]), (T.FLOAT32, [1.0, 1e39]), (T.UINT8, [True])):
        with pytest.raises(InputError, match="GGUF key 'k'"):
            NewField("k", T.ARRAY, values, item_type).pack()
