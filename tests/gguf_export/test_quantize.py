"""HF → GGUF k-quants and i-quants: ropeconv's float conversion quantized by llama.cpp's own quantizer
(llama_model_quantize), loaded in llama.cpp and judged twice — the float32 conversion strictly, the file by the
quantized gate; ropeconv's metadata and carrier tensors survive the quantizer; an importance matrix reaches it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ropeconv.gguf_io.reader import read_gguf
from ropeconv.gguf_io.writer import rewrite_gguf
from tests.conftest import (
    IQ4_NL_LEVELS,
    ORIGINAL_CTX,
    add_byte_level_tokenizer,
    assert_refused,
    listing,
    make_tiny,
    on_quant_grid,
    read_json,
    run_cli,
)

pytest.importorskip("llama_cpp")

TOKENS = str(4 * ORIGINAL_CTX)
# rows of 256 (k-quant super-blocks): llama.cpp falls back to legacy types for narrower rows
WIDE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quant")


@pytest.fixture(scope="module")
def base(root) -> Path:
    """Matrices on a 16-level grid: what llama.cpp's uniform 4- to 6-bit types reproduce exactly, leaving the
    quantized gate the activation rounding llama.cpp's quantized matmuls add (and a wrong rope, which it fails)."""
    return on_quant_grid(add_byte_level_tokenizer(make_tiny(root, "llama", **WIDE)))


@pytest.fixture(scope="module")
def nl_base(root) -> Path:
    """Matrices on IQ4_NL's non-uniform grid."""
    return on_quant_grid(add_byte_level_tokenizer(make_tiny(root, "llama", name="tiny-llama-nl", **WIDE)),
                         IQ4_NL_LEVELS, 2.0**-9)


def freqs_args(tmp: Path) -> list[str]:
    """Per-pair factors: ropeconv carries them in a rope_freqs tensor."""
    path = tmp / "freqs.json"
    path.write_text(json.dumps([1.0 + 3.0 * j / 31 for j in range(32)]))
    return ["--method", "freqs", "--factors", str(path), "--factor", "4"]


def extend(base: Path, out: Path, outtype: str, *extra: str, method: list[str] | None = None) -> int:
    return run_cli("extend", base, *(method or ["--method", "yarn", "--factor", "4"]), "--to", "gguf", "--outtype",
                   outtype, "-o", out, "--tokens", TOKENS, "-q", *extra)


def kinds(path: Path) -> dict[str, str]:
    return {t.name: t.ggml_type.name for t in read_gguf(path).tensors}


def test_q4_k_m_by_llama_cpp_keeps_metadata_and_carriers_and_passes_both_gates(base, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    assert extend(base, out, "q4_k_m", "--json", method=freqs_args(tmp_path)) == 0
    result = json.loads(capsys.readouterr().out)
    path = out / "tiny-llama-Q4_K_M.gguf"
    assert result["files"] == ["tiny-llama-Q4_K_M.gguf"] or "tiny-llama-Q4_K_M.gguf" in result["files"]
    assert not [p for p in listing(out) if p.startswith(".")]  # the staged float conversion is gone
    types = kinds(path)
    # llama.cpp's Q4_K_M mix: Q4_K matrices, Q6_K for some attn_v / ffn_down and the output
    assert types["blk.0.attn_q.weight"] == "Q4_K" and "Q6_K" in set(types.values())
    # 1-D carriers and norms are not quantized
    assert types["rope_freqs.weight"] == types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    src = read_gguf(path)
    assert src.value("general.file_type") == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    plan = json.loads(src.value("ropeconv.plan"))
    assert plan["method"] == "freqs" and plan == read_json(out / "manifest.json")["plan"]
    record = read_json(out / "manifest.json")["formats"]["gguf"]
    assert record["outtype"] == "q4_k_m" and record["quantized_by"]["from"] == "f32"

    report = result["parity"]
    strict = [b for b in report["bands"] if not b["quantized"]]
    gated = [b for b in report["bands"] if b["quantized"]]
    assert report["passed"] and strict and gated
    print(f"q4_k_m: twin max|Δlogit| {max(b['max_abs_logit'] for b in strict):.3g}; file KL "
          f"{max(b['mean_kl'] for b in gated):.3g} top-1 {min(b['top1'] for b in gated):.1%}")

    # verify re-proves the output; the file with its carrier reset to ones (no extension) fails, through the
    # float32 twin of its own (dequantized) tensors
    assert run_cli("verify", out, "--tokens", TOKENS, "-q") == 0
    stripped = tmp_path / "stripped.gguf"
    rewrite_gguf(src, stripped, add_tensors={"rope_freqs.weight": np.ones(32, np.float32)})
    assert run_cli("verify", stripped, "--base", base, "--tokens", TOKENS, "-q") == 1


@pytest.mark.parametrize("outtype,matrix_type", [("q5_k_m", "Q5_K"), ("q6_k", "Q6_K"), ("q4_0", "Q4_0"),
                                                 ("iq4_nl", "IQ4_NL")])
def test_quantized_types_load_in_llama_cpp_and_pass_the_quantized_gate(base, nl_base, tmp_path, capsys, outtype,
                                                                         matrix_type):
    out = tmp_path / "out"
    capsys.readouterr()
    source = nl_base if outtype == "iq4_nl" else base
    assert extend(source, out, outtype, "--json") == 0
    report = json.loads(capsys.readouterr().out)["parity"]
    gated = [b for b in report["bands"] if b["quantized"]]
    print(f"{outtype}: file KL {max(b['mean_kl'] for b in gated):.3g} top-1 {min(b['top1'] for b in gated):.1%}")
    assert report["passed"] and gated
    assert kinds(out / f"{source.name}-{outtype.upper()}.gguf")["blk.1.ffn_up.weight"] == matrix_type


def _write_imatrix(path: Path, gguf: Path, seed: int) -> dict[str, tuple[np.ndarray, float]]:
    """llama-imatrix's GGUF layout: <tensor>.in_sum2 and <tensor>.counts per 2-D tensor, imatrix.* metadata."""
    import gguf as gguf_py

    rng = np.random.default_rng(seed)
    writer = gguf_py.GGUFWriter(path, arch="imatrix", use_temp_file=False)
    writer.add_array("imatrix.datasets", ["test-data.txt"])
    writer.add_uint32("imatrix.chunk_count", 4)
    writer.add_uint32("imatrix.chunk_size", 512)
    data = {}
    for t in read_gguf(gguf).tensors:
        if len(t.shape) == 2:
            sums, count = rng.uniform(0.01, 100.0, t.shape[0]).astype(np.float32), 2048.0
            writer.add_tensor(f"{t.name}.in_sum2", sums)
            writer.add_tensor(f"{t.name}.counts", np.array([count], np.float32))
            data[t.name] = (sums, count)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return data


def test_an_importance_matrix_reaches_llama_cpps_quantizer(root, tmp_path, capsys):
    """The imatrix changes llama.cpp's rounding (other bytes than without), is recorded as llama-quantize records
    it, and unlocks the types llama.cpp quantizes only with one; the legacy .dat reads as the same values.
    (Random weights: on a grid base every weighting finds the same exact blocks.)"""
    from ropeconv.gguf_export.quantize import load_imatrix

    base = add_byte_level_tokenizer(make_tiny(root, "llama", name="tiny-llama-random", **WIDE))

    plain = tmp_path / "plain"
    assert extend(base, plain, "q4_k_m", "--no-verify") == 0
    matrix = tmp_path / "imatrix.gguf"
    data = _write_imatrix(matrix, plain / "tiny-llama-random-Q4_K_M.gguf", seed=0)
    guided = tmp_path / "guided"
    assert extend(base, guided, "q4_k_m", "--imatrix", matrix, "--no-verify") == 0

    def tensor_bytes(path: Path, name: str) -> bytes:
        t = next(t for t in read_gguf(path).tensors if t.name == name)
        with open(path, "rb") as f:
            f.seek(t.offset)
            return f.read(t.nbytes)

    a, b = plain / "tiny-llama-random-Q4_K_M.gguf", guided / "tiny-llama-random-Q4_K_M.gguf"
    assert tensor_bytes(a, "blk.0.attn_q.weight") != tensor_bytes(b, "blk.0.attn_q.weight")
    src = read_gguf(b)
    assert src.value("quantize.imatrix.file") == "imatrix.gguf"
    assert src.value("quantize.imatrix.entries_count") == len(data)
    assert src.value("quantize.imatrix.dataset") == "test-data.txt"

    # llama-imatrix's legacy .dat: n, then (name length, name, ncall, nval, values) per entry; values / ncall
    legacy = tmp_path / "imatrix.dat"
    with open(legacy, "wb") as f:
        f.write(np.int32(len(data)).tobytes())
        for name, (sums, count) in data.items():
            f.write(np.int32(len(name)).tobytes() + name.encode() + np.int32(4).tobytes()
                    + np.int32(sums.size).tobytes() + (sums * 4 / count).astype(np.float32).tobytes())
    from_gguf, from_dat = load_imatrix(matrix), load_imatrix(legacy)
    for name, (sums, count) in data.items():
        assert np.allclose(from_gguf.entries[name], sums / count, rtol=1e-6)
        assert np.allclose(from_dat.entries[name], sums / count, rtol=1e-6)

    before = listing(tmp_path)
    capsys.readouterr()
    rc = extend(base, tmp_path / "iq2", "iq2_xxs")
    assert "--imatrix" in assert_refused(capsys, rc, tmp_path / "iq2", before)
    assert extend(base, tmp_path / "iq2", "iq2_xxs", "--imatrix", legacy, "--no-verify") == 0
    assert kinds(tmp_path / "iq2" / "tiny-llama-random-IQ2_XXS.gguf")["blk.0.attn_q.weight"] == "IQ2_XXS"


def _mismatched_imatrix(tmp: Path) -> Path:
    path = tmp / "other.dat"
    name = b"blk.0.attn_q.weight"
    path.write_bytes(np.int32(1).tobytes() + np.int32(len(name)).tobytes() + name + np.int32(1).tobytes()
                     + np.int32(100).tobytes() + np.ones(100, np.float32).tobytes())
    return path


BAD = {
    "unknown outtype": (["--outtype", "q9_k"], "outtype"),
    "an i-quant without an importance matrix": (["--outtype", "iq1_s"], "--imatrix"),
    "an importance matrix for a type ropeconv writes": (["--outtype", "q8_0", "--imatrix", "IM"], "--imatrix"),
    "an importance matrix of another model": (["--outtype", "q4_k_m", "--imatrix", "IM"], "row length"),
    "an importance matrix that is not one": (["--outtype", "q4_k_m", "--imatrix", "JUNK"], "imatrix"),
    "an importance matrix declaring more entries than it holds": (["--outtype", "q4_k_m", "--imatrix", "SHORT"],
                                                                   "more than its 12 bytes can hold"),
    "an importance matrix that does not exist": (["--outtype", "q4_k_m", "--imatrix", "/nonexistent.dat"],
                                                 "not found"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_quantization_requests_exit_2_with_one_line_and_write_nothing(base, tmp_path, case, capsys):
    args, word = BAD[case]
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x00\x00\x00\x00")
    short = tmp_path / "short.dat"
    short.write_bytes(np.array([1000, 0, 0], "<i4").tobytes())
    named = {"IM": _mismatched_imatrix(tmp_path), "JUNK": junk, "SHORT": short}
    args = [str(named.get(a, a)) for a in args]
    out = tmp_path / "out"
    before = listing(tmp_path)
    capsys.readouterr()
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "gguf", *args, "-o", out)
    assert word in assert_refused(capsys, rc, out, before)


def _bytes_read() -> int:
    """What this process has read so far through read() and friends (mapped pages are not counted)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


LEGACY_NAME = b"blk.0.attn_q.weight"
HUGE_LEGACY = {  # header → what the one line says
    "no entries": np.int32(0).tobytes(),
    "entries declared": np.int32(2**31 - 1).tobytes(),
    "name length": np.array([1, 2**31 - 1], "<i4").tobytes(),
    "value count": np.array([1, len(LEGACY_NAME)], "<i4").tobytes() + LEGACY_NAME
    + np.array([1, 2**31 - 1], "<i4").tobytes(),
}


@pytest.mark.parametrize("word", list(HUGE_LEGACY))
def test_a_huge_legacy_imatrix_is_refused_before_its_bytes_are_read(tmp_path, word):
    """A legacy .dat of 256 MiB (sparse) whose header cannot describe it is refused in one line having read a few
    bytes of it: its counts and lengths are checked against the file's size first (it was read whole)."""
    from ropeconv.errors import InputError
    from ropeconv.gguf_export.quantize import load_imatrix

    path = tmp_path / "huge.dat"
    with open(path, "wb") as fh:
        fh.write(HUGE_LEGACY[word])
        fh.truncate(256 << 20)
    before = _bytes_read()
    with pytest.raises(InputError) as refused:
        load_imatrix(path)
    read = _bytes_read() - before
    assert read < 1 << 20, f"{read} bytes read to refuse it"
    message = str(refused.value)
    assert word in message and "\n" not in message and str(path) in message, message


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gpt2"])
def test_the_quantized_reference_reads_back_the_bases_tensors(root, tmp_path, arch):
    """The quantized rows' reference decodes the file's tensors back into the base's names and layouts (llama's
    permuted q/k rows, GPT-NeoX's regrouped qkv, GPT-2's transposed Conv1D, the tied output): from a Q8_0 file
    every tensor comes back as the base's within Q8_0's rounding (half a step of max|block| / 127, plus the
    float16 rounding of that step: ≤ 0.6 of the step at the tensor's largest weight), where a tensor in the wrong
    order would be off by the weights' own size."""
    from safetensors.torch import load_file

    from ropeconv.parity.dequantized import tensors_of
    from ropeconv.positions import plan_from_json

    method = ["--method", "absolute", "--factor", "4"] if arch == "gpt2" else ["--method", "yarn", "--factor", "4"]
    base = add_byte_level_tokenizer(make_tiny(root, arch, name=f"decode-{arch}", tie_word_embeddings=True))
    out = tmp_path / "out"
    assert run_cli("extend", base, *method, "--to", "gguf", "--outtype", "q8_0", "--no-verify", "-q", "-o", out) == 0
    plan = plan_from_json(read_json(out / "manifest.json")["plan"])
    original = load_file(base / "model.safetensors")
    decoded = list(tensors_of(next(out.glob("*.gguf")), base, plan))
    assert len(decoded) >= 2 * 4 and any(output for _, _, output in decoded)  # the tied output: the embedding
    for name, tensor, _ in decoded:
        expected = original[name]
        assert tensor.shape == expected.shape, name
        step = expected.abs().max().item() / 127
        assert (tensor - expected).abs().max().item() <= 0.6 * step, name
