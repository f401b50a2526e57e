"""GGUF container layer: read as an index, rewrite by streaming, refuse malformed files.

The output is always checked by independent readers (gguf-py's GGUFReader, and llama.cpp through
llama-cpp-python), never by our own reader alone. Malformed inputs are built by patching bytes at
positions located with GGUFReader, in a tiny file written by gguf-py's own writer or in a prefix of
the real SmolLM2 GGUF.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as T

from ropeconv.errors import InputError, RopeconvError
from ropeconv.fixtures.smollm2 import gguf_path
from ropeconv.gguf_io import GgufWriter, NewField, TensorInfo, read_gguf, rewrite_gguf

# one thread: on a small, busy machine llama.cpp's spinning worker threads make a 5-token eval take seconds
LLAMA_KW = dict(n_ctx=64, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False)

RETROFIT = {
    "llama.context_length": (T.UINT32, 32768),
    "llama.rope.scaling.type": (T.STRING, "yarn"),
    "llama.rope.scaling.factor": (T.FLOAT32, 4.0),
    "llama.rope.scaling.original_context_length": (T.UINT32, 8192),
}
CARRIER = (1.0 + np.arange(32, dtype=np.float32) / 8).astype(np.float32)


# ---------------------------------------------------------------- helpers


def sha256_range(path: Path, offset: int, nbytes: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return hashlib.sha256(fh.read(nbytes)).hexdigest()


def file_sha256(path: Path) -> str:
    return sha256_range(path, 0, os.path.getsize(path))


def field_value(field: gguf.ReaderField):
    return field.contents()


def field_bytes(field: gguf.ReaderField) -> bytes:
    return b"".join(part.tobytes() for part in field.parts)


def tensor_info_layout(path_or_reader: Path | gguf.GGUFReader) -> dict[str, dict[str, int]]:
    """Byte positions of each tensor info's parts, located with gguf-py's reader (not ours)."""
    reader = path_or_reader if isinstance(path_or_reader, gguf.GGUFReader) else gguf.GGUFReader(path_or_reader)
    layout = {}
    for t in reader.tensors:
        pos = t.field.offset
        (name_len,) = struct.unpack_from("<Q", reader.data, pos)
        n_dims_at = pos + 8 + name_len
        (n_dims,) = struct.unpack_from("<I", reader.data, n_dims_at)
        dims_at = n_dims_at + 4
        type_at = dims_at + 8 * n_dims
        layout[t.name] = {"start": pos, "n_dims": n_dims_at, "dims": dims_at, "type": type_at, "offset": type_at + 4,
                          "end": type_at + 12, "rel_offset": t.data_offset - reader.data_offset,
                          "data": int(t.data_offset), "nbytes": int(t.n_bytes)}
    return layout


def kv_offsets(path_or_reader: Path | gguf.GGUFReader) -> dict[str, int]:
    reader = path_or_reader if isinstance(path_or_reader, gguf.GGUFReader) else gguf.GGUFReader(path_or_reader)
    return {k: f.offset for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def patched(src: Path, dst: Path, at: int, data: bytes) -> Path:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as fh:
        fh.seek(at)
        fh.write(data)
    return dst


def truncated(src: Path, dst: Path, size: int) -> Path:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(fin.read(size))
    return dst


def make_tiny(path: Path, *, alignment: int | None = None, keys: dict | None = None) -> Path:
    """A small GGUF written by gguf-py itself: F32, Q8_0 and F16 tensors, a few keys."""
    w = gguf.GGUFWriter(path, "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_uint32("test.u32a", 7)
    w.add_uint32("test.u32b", 8)
    w.add_float32("test.f32", 0.5)
    w.add_array("test.words", ["alpha", "beta", "gamma"])
    for key, (kind, value) in (keys or {}).items():
        w.add_key_value(key, value, kind)
    w.add_tensor("a", np.arange(8, dtype=np.float32))
    q8 = np.arange(2 * 2 * 34, dtype=np.uint8).reshape(2, 2 * 34)  # 2 rows of 2 Q8_0 blocks: ne = [64, 2]
    w.add_tensor("q", q8, raw_dtype=Q.Q8_0)
    w.add_tensor("b", np.arange(12, dtype=np.float16).reshape(3, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def expect_input_error(path: Path, *words: str) -> str:
    with pytest.raises(InputError) as info:
        read_gguf(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message
    return message


@pytest.fixture(scope="module")
def smol() -> Path:
    return gguf_path()


# gguf-py's reader takes ~2.5 s on this file (it builds a numpy view per vocabulary string), so each
# real file is opened by it once per module.
@pytest.fixture(scope="module")
def smol_ref(smol) -> gguf.GGUFReader:
    return gguf.GGUFReader(smol)


@pytest.fixture(scope="module")
def retrofitted(smol, module_tmp) -> Path:
    """The retrofit: context 32k, YaRN ×4 keys, and a rope_freqs.weight carrier appended."""
    dst = module_tmp / "smol-yarn.gguf"
    rewrite_gguf(read_gguf(smol), dst, set_fields=RETROFIT, add_tensors={"rope_freqs.weight": CARRIER})
    return dst


@pytest.fixture(scope="module")
def retrofitted_ref(retrofitted) -> gguf.GGUFReader:
    return gguf.GGUFReader(retrofitted)


@pytest.fixture
def tiny(tmp_path) -> Path:
    return make_tiny(tmp_path / "tiny.gguf")


# ---------------------------------------------------------------- reading


def test_reads_smollm2_as_index(smol, smol_ref):
    g = read_gguf(smol)
    assert (g.version, g.alignment, g.arch) == (3, 32, "llama")
    assert len(g.tensors) == 272 and len(g.fields) == 33
    assert g.value("llama.context_length") == 8192
    assert g.value("llama.rope.freq_base") == 1e5
    assert g.value("missing.key", "dflt") == "dflt" and g.field("missing.key") is None
    assert g.field("llama.context_length").value_type == T.UINT32
    tokens = g.field("tokenizer.ggml.tokens")
    assert (tokens.value_type, tokens.item_type, len(tokens.value)) == (T.ARRAY, T.STRING, 49152)

    # everything agrees with gguf-py's reader, field by field and tensor by tensor
    ref_fields = [(k, f) for k, f in smol_ref.fields.items() if not k.startswith("GGUF.")]
    assert [f.key for f in g.fields] == [k for k, _ in ref_fields]
    for ours, (_, theirs) in zip(g.fields, ref_fields):
        assert ours.offset == theirs.offset
        assert [ours.value_type] + ([ours.item_type] if ours.item_type else []) == list(theirs.types)
        assert ours.value == field_value(theirs), ours.key
    assert g.data_offset == smol_ref.data_offset
    for ours, theirs in zip(g.tensors, smol_ref.tensors):
        assert (ours.name, ours.ggml_type, ours.offset, ours.nbytes) == (
            theirs.name, theirs.tensor_type, theirs.data_offset, theirs.n_bytes)
        assert ours.shape == tuple(int(d) for d in theirs.shape)
    embd = g.tensor("token_embd.weight")
    assert embd.shape == (576, 49152) and embd.torch_shape == (49152, 576) and embd.ggml_type == Q.Q8_0


def test_raw_bytes_are_the_exact_serialized_pairs(smol):
    g = read_gguf(smol)
    with open(smol, "rb") as fh:
        for f in g.fields:
            fh.seek(f.offset)
            assert fh.read(len(f.raw)) == f.raw
    # the pairs tile the KV section exactly
    assert all(a.offset + len(a.raw) == b.offset for a, b in zip(g.fields, g.fields[1:]))
    assert g.fields[0].offset == 24


# ---------------------------------------------------------------- rewriting the real file


def test_retrofit_keeps_every_other_field_and_tensor_byte(smol, smol_ref, retrofitted, retrofitted_ref):
    src, dst = smol_ref, retrofitted_ref
    src_keys = [k for k in src.fields if not k.startswith("GGUF.")]
    dst_keys = [k for k in dst.fields if not k.startswith("GGUF.")]
    new_keys = [k for k in RETROFIT if k not in src.fields]
    assert dst_keys == src_keys + new_keys  # order kept, changed key in place, new ones appended
    for key in src_keys:
        assert dst.fields[key].types == src.fields[key].types, key
        if key != "llama.context_length":
            assert field_bytes(dst.fields[key]) == field_bytes(src.fields[key]), key
            assert field_value(dst.fields[key]) == field_value(src.fields[key]), key
    for key, (kind, value) in RETROFIT.items():
        assert dst.fields[key].types == [kind], key
        assert field_value(dst.fields[key]) == value, key

    assert dst.alignment == 32 and dst.data_offset % 32 == 0
    assert [t.name for t in dst.tensors] == [t.name for t in src.tensors] + ["rope_freqs.weight"]
    for s, d in zip(src.tensors, dst.tensors):
        assert (d.tensor_type, list(d.shape), d.n_bytes) == (s.tensor_type, list(s.shape), s.n_bytes)
        assert d.data_offset % 32 == 0 and (d.data_offset - dst.data_offset) % 32 == 0, d.name
        assert sha256_range(retrofitted, d.data_offset, d.n_bytes) == sha256_range(smol, s.data_offset, s.n_bytes)


def test_carrier_tensor_is_appended_aligned(retrofitted, retrofitted_ref):
    t = retrofitted_ref.tensors[-1]
    assert (t.name, t.tensor_type, list(t.shape)) == ("rope_freqs.weight", Q.F32, [32])
    assert t.data_offset % 32 == 0 and (t.data_offset - retrofitted_ref.data_offset) % 32 == 0
    np.testing.assert_array_equal(np.asarray(t.data), CARRIER)
    assert os.path.getsize(retrofitted) == t.data_offset + 128  # 128 bytes: already a multiple of 32
    assert read_gguf(retrofitted).tensor("rope_freqs.weight").torch_shape == (32,)


def test_retrofit_loads_in_llama_cpp(retrofitted):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(retrofitted), **LLAMA_KW)
    assert llm.metadata["llama.rope.scaling.type"] == "yarn"
    assert llm._model.n_ctx_train() == 32768  # llama.cpp took the rewritten context_length
    tokens = llm.tokenize(b"The capital of France is")[:3]
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)])
    assert np.isfinite(logits).all() and (logits.std(axis=1) > 0).all()


def test_llama_cpp_consumes_the_carrier(smol, tmp_path):
    # llama.cpp divides its rope frequencies by rope_freqs.weight: ones change nothing, 4s do
    llama_cpp = pytest.importorskip("llama_cpp")
    src = read_gguf(smol)
    ones, fours = tmp_path / "ones.gguf", tmp_path / "fours.gguf"
    rewrite_gguf(src, ones, add_tensors={"rope_freqs.weight": np.ones(32, np.float32)})
    rewrite_gguf(src, fours, add_tensors={"rope_freqs.weight": np.full(32, 4.0, np.float32)})

    def logits(path: Path) -> np.ndarray:
        llm = llama_cpp.Llama(model_path=str(path), **LLAMA_KW)
        tokens = llm.tokenize(b"The capital of France is")
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)])

    base = logits(smol)
    np.testing.assert_array_equal(logits(ones), base)
    moved = np.abs(logits(fours) - base).max(axis=1)
    assert moved[0] == 0 and (moved[1:] > 0.1).all()  # position 0 has no rotation to change


def test_no_change_rewrite_is_byte_identical(smol, tmp_path):
    # SmolLM2's GGUF was written by gguf-py with the same conventions (v3, 32-byte alignment,
    # contiguous padded tensors, zero padding, padded end), so a no-op rewrite reproduces it exactly.
    out = tmp_path / "same.gguf"
    rewrite_gguf(read_gguf(smol), out)
    assert os.path.getsize(out) == os.path.getsize(smol)
    assert file_sha256(out) == file_sha256(smol)


def test_rewrite_is_deterministic(smol, retrofitted, tmp_path):
    again = tmp_path / "again.gguf"
    rewrite_gguf(read_gguf(smol), again, set_fields=RETROFIT, add_tensors={"rope_freqs.weight": CARRIER})
    assert file_sha256(again) == file_sha256(retrofitted)


def test_refuses_rewriting_onto_itself(tiny):
    before = file_sha256(tiny)
    with pytest.raises(InputError, match="onto itself"):
        rewrite_gguf(read_gguf(tiny), tiny, set_fields={"test.u32a": (T.UINT32, 1)})
    assert file_sha256(tiny) == before


# ---------------------------------------------------------------- rewriting small files


def test_replace_drop_and_realign(tiny, tmp_path):
    out = tmp_path / "out.gguf"
    src = read_gguf(tiny)
    rewrite_gguf(src, out, set_fields={"test.u32a": (T.UINT32, 70), "general.alignment": (T.UINT32, 64)},
                 drop_keys={"test.f32", "not.there"}, add_tensors={"q": np.ones((3, 2), np.float32)})
    ref = gguf.GGUFReader(out)
    keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert keys == ["general.architecture", "test.u32a", "test.u32b", "test.words", "general.alignment"]
    assert field_value(ref.fields["test.u32a"]) == 70 and ref.alignment == 64
    assert [t.name for t in ref.tensors] == ["a", "q", "b"]  # replaced where it stood
    q = ref.tensors[1]
    assert (q.tensor_type, list(q.shape)) == (Q.F32, [2, 3])
    for t in ref.tensors:
        assert t.data_offset % 64 == 0
    np.testing.assert_array_equal(np.asarray(ref.tensors[0].data), np.arange(8, dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(ref.tensors[2].data), np.arange(12, dtype=np.float16).reshape(3, 4))
    back = read_gguf(out)
    assert back.alignment == 64 and back.value("test.words") == ["alpha", "beta", "gamma"]


def test_writer_packs_every_value_type(tmp_path):
    values = [
        NewField("general.architecture", T.STRING, "llama"),
        NewField("v.u8", T.UINT8, 255), NewField("v.i8", T.INT8, -128),
        NewField("v.u16", T.UINT16, 65535), NewField("v.i16", T.INT16, -32768),
        NewField("v.u32", T.UINT32, 2**32 - 1), NewField("v.i32", T.INT32, -(2**31)),
        NewField("v.u64", T.UINT64, 2**64 - 1), NewField("v.i64", T.INT64, -(2**63)),
        NewField("v.f32", T.FLOAT32, 0.25), NewField("v.f64", T.FLOAT64, 1 / 3),
        NewField("v.bool", T.BOOL, True), NewField("v.str", T.STRING, "héllo"),
        NewField("v.arr_i32", T.ARRAY, [1, -2, 3], T.INT32), NewField("v.arr_f32", T.ARRAY, [0.5, 2.0], T.FLOAT32),
        NewField("v.arr_str", T.ARRAY, ["x", "", "zz"], T.STRING),
        NewField("v.arr_bool", T.ARRAY, [True, False], T.BOOL), NewField("v.empty", T.ARRAY, [], T.UINT8),
    ]  # fmt: skip
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = tmp_path / "all.gguf"
    with GgufWriter(out, values, [TensorInfo.of_array("t", data)]) as w:
        w.write_tensor("t", data)
    ref = gguf.GGUFReader(out)
    ours = read_gguf(out)
    for f in values:
        assert ref.fields[f.key].types == [f.value_type] + ([f.item_type] if f.item_type else []), f.key
        assert field_value(ref.fields[f.key]) == f.value, f.key
        assert ours.value(f.key) == f.value, f.key
    np.testing.assert_array_equal(np.asarray(ref.tensors[0].data), data)


@pytest.mark.parametrize("field", [
    NewField("k", T.UINT32, -1), NewField("k", T.UINT32, 2**32), NewField("k", T.INT8, 128),
    NewField("k", T.UINT32, 1.0), NewField("k", T.UINT32, True), NewField("k", T.FLOAT32, "1"),
    NewField("k", T.FLOAT32, 1e39), NewField("k", T.STRING, 3), NewField("k", T.BOOL, 1),
    NewField("k", T.ARRAY, [1]), NewField("k", T.ARRAY, 1, T.UINT8), NewField("k", T.ARRAY, [300], T.UINT8),
], ids=lambda f: f"{f.value_type.name}-{f.value!r}")  # fmt: skip
def test_packer_refuses_values_that_do_not_fit(field):
    with pytest.raises(InputError, match="'k'"):
        field.pack()


def test_writer_enforces_order_sizes_and_completeness(tmp_path):
    fields = [NewField("general.architecture", T.STRING, "llama")]
    a, b = np.zeros(4, np.float32), np.zeros(8, np.float32)
    infos = [TensorInfo.of_array("a", a), TensorInfo.of_array("b", b)]
    w = GgufWriter(tmp_path / "x.gguf", fields, infos)
    with pytest.raises(RopeconvError, match="out of order"):
        w.write_tensor("b", b)
    with pytest.raises(RopeconvError, match="header says"):
        w.write_tensor("a", b)
    w.write_tensor("a", a)
    with pytest.raises(RopeconvError, match="never written"):
        w.close()
    with pytest.raises(RopeconvError, match="alignment"):
        GgufWriter(tmp_path / "y.gguf", fields, infos, alignment=64)  # metadata does not declare 64
    with pytest.raises(InputError, match="longer than"):
        GgufWriter(tmp_path / "z.gguf", fields, [TensorInfo.of_array("n" * 64, a)])


# ---------------------------------------------------------------- malformed input


def test_bad_magic(tiny, tmp_path):
    expect_input_error(patched(tiny, tmp_path / "m.gguf", 0, b"GGML"), "not a GGUF file")


@pytest.mark.parametrize("version, words", [
    (1, ("version 1",)), (4, ("version 4",)), (0, ("version 0",)), (0x03000000, ("big-endian",)),
])  # fmt: skip
def test_unsupported_version(tiny, tmp_path, version, words):
    expect_input_error(patched(tiny, tmp_path / "v.gguf", 4, struct.pack("<I", version)), *words)


def test_truncated_tiny_at_every_byte(tiny, tmp_path):
    # every prefix that cuts into the header or into tensor data is refused, with an InputError only
    layout = tensor_info_layout(tiny)
    data_end = max(t["data"] + t["nbytes"] for t in layout.values())
    cut = tmp_path / "cut.gguf"
    raw = tiny.read_bytes()
    for size in range(data_end):
        cut.write_bytes(raw[:size])
        with pytest.raises(InputError):
            read_gguf(cut)
    cut.write_bytes(raw[:data_end])  # only the final padding missing: the data is all there
    assert len(read_gguf(cut).tensors) == 3


@pytest.mark.parametrize("where", ["header", "mid-kv", "mid-tensor-info", "mid-data"])
def test_truncated_smollm2(smol, smol_ref, tmp_path, where):
    layout = tensor_info_layout(smol_ref)
    last = max(layout, key=lambda name: layout[name]["data"])
    size = {
        "header": 20,
        "mid-kv": kv_offsets(smol_ref)["tokenizer.ggml.tokens"] + 400_000,  # inside the vocabulary array
        "mid-tensor-info": layout["blk.7.attn_k.weight"]["dims"] + 5,
        "mid-data": layout[last]["data"] + layout[last]["nbytes"] // 2,
    }[where]
    message = expect_input_error(truncated(smol, tmp_path / "cut.gguf", size), "truncated")
    if where == "mid-data":
        assert repr(last) in message, message


def test_tensor_offset_beyond_file(smol, smol_ref, tmp_path):
    at = tensor_info_layout(smol_ref)["output_norm.weight"]["offset"]
    beyond = os.path.getsize(smol) // 32 * 32 + 32 * 1024
    bad = patched(smol, tmp_path / "far.gguf", at, struct.pack("<Q", beyond))
    expect_input_error(bad, "'output_norm.weight'", "past the end")


def test_tensor_offset_beyond_file_tiny(tiny, tmp_path):
    at = tensor_info_layout(tiny)["b"]["offset"]
    expect_input_error(patched(tiny, tmp_path / "far.gguf", at, struct.pack("<Q", 2**63)), "'b'", "past the end")


def test_overlapping_tensors(tiny, tmp_path):
    layout = tensor_info_layout(tiny)
    bad = patched(tiny, tmp_path / "ov.gguf", layout["b"]["offset"], struct.pack("<Q", layout["q"]["rel_offset"]))
    expect_input_error(bad, "overlaps")


def test_misaligned_tensor(tiny, tmp_path):
    layout = tensor_info_layout(tiny)
    bad = patched(tiny, tmp_path / "mis.gguf", layout["b"]["offset"], struct.pack("<Q", layout["b"]["rel_offset"] + 4))
    expect_input_error(bad, "'b'", "alignment")


@pytest.mark.parametrize("type_id", [4, 99, 2**31])  # 4 is Q4_2, long removed from ggml
def test_unknown_ggml_type(tiny, tmp_path, type_id):
    bad = patched(tiny, tmp_path / "t.gguf", tensor_info_layout(tiny)["a"]["type"], struct.pack("<I", type_id))
    expect_input_error(bad, "'a'", f"unknown ggml type id {type_id}")


def test_inconsistent_quantized_size(tiny, tmp_path):
    # ne0 48 is not a whole number of 32-element Q8_0 blocks: the byte size cannot be right
    bad = patched(tiny, tmp_path / "q.gguf", tensor_info_layout(tiny)["q"]["dims"], struct.pack("<Q", 48))
    expect_input_error(bad, "'q'", "inconsistent size")


def test_too_many_dims(tiny, tmp_path):
    bad = patched(tiny, tmp_path / "d.gguf", tensor_info_layout(tiny)["a"]["n_dims"], struct.pack("<I", 5))
    expect_input_error(bad, "'a'", "5 dimensions")


@pytest.mark.parametrize("use_real", [False, True], ids=["tiny", "smollm2"])
def test_missing_architecture(tiny, smol, smol_ref, tmp_path, use_real):
    src = smol if use_real else tiny
    at = kv_offsets(smol_ref if use_real else tiny)["general.architecture"] + 8  # past the key's length
    bad = patched(src, tmp_path / "noarch.gguf", at, b"general.architectur_")
    expect_input_error(bad, "general.architecture")


def test_duplicate_key_and_tensor_name(tiny, tmp_path):
    at = kv_offsets(tiny)["test.u32b"] + 8
    expect_input_error(patched(tiny, tmp_path / "k.gguf", at, b"test.u32a"), "duplicate key 'test.u32a'")
    at = tensor_info_layout(tiny)["b"]["start"] + 8
    expect_input_error(patched(tiny, tmp_path / "n.gguf", at, b"a"), "duplicate tensor name 'a'")


def test_unknown_value_type_and_absurd_lengths(tiny, tmp_path):
    kv = kv_offsets(tiny)
    type_at = kv["test.u32a"] + 8 + len("test.u32a")
    expect_input_error(patched(tiny, tmp_path / "vt.gguf", type_at, struct.pack("<I", 13)), "unknown (13)")
    expect_input_error(patched(tiny, tmp_path / "kl.gguf", kv["test.u32a"], struct.pack("<Q", 2**62)), "truncated")
    count_at = kv["test.words"] + 8 + len("test.words") + 8
    expect_input_error(patched(tiny, tmp_path / "ac.gguf", count_at, struct.pack("<Q", 2**60)), "test.words")


def test_bad_alignment_key(tmp_path):
    expect_input_error(make_tiny(tmp_path / "u64.gguf", keys={"general.alignment": (T.UINT64, 32)}), "UINT32")
    tiny64 = make_tiny(tmp_path / "a64.gguf", alignment=64)
    at = kv_offsets(tiny64)["general.alignment"] + 8 + len("general.alignment") + 4
    expect_input_error(patched(tiny64, tmp_path / "a48.gguf", at, struct.pack("<I", 48)), "power of two")
    assert read_gguf(tiny64).alignment == 64


def test_nested_array_refused(tmp_path):
    expect_input_error(make_tiny(tmp_path / "nest.gguf", keys={"test.nested": (T.ARRAY, [[1, 2], [3]])}), "nested")


def test_header_byte_corruption_never_escapes_as_another_error(tiny, tmp_path):
    # any single corrupted header byte gives either a valid index or an InputError, nothing else
    raw = bytearray(tiny.read_bytes())
    header_end = max(t["end"] for t in tensor_info_layout(tiny).values())
    bad = tmp_path / "flip.gguf"
    for pos in range(header_end):
        for value in (0x00, 0xFF, raw[pos] ^ 0x01):
            mutated = bytearray(raw)
            mutated[pos] = value
            bad.write_bytes(mutated)
            try:
                read_gguf(bad)
            except InputError as exc:
                assert "\n" not in str(exc)


def test_unreadable_paths(tmp_path):
    expect_input_error(tmp_path / "absent.gguf", "cannot read")
    (tmp_path / "empty.gguf").write_bytes(b"")
    expect_input_error(tmp_path / "empty.gguf", "not a GGUF file")
    with pytest.raises(InputError, match="cannot read"):
        read_gguf(tmp_path)
