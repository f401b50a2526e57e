"""The llama.cpp runtime (llama-cpp-python) on the real SmolLM2-135M GGUF: positions, parity, errors.

RoPE, scaled statically or not, only sees relative distances, so logits cannot show whether an offset
was honoured (measured: 0..1023 vs 7680..8703 differ by float noise only). The offset is therefore
checked where llama.cpp keeps it, in its memory's positions; the rope math is checked by parity on a
float32 twin of the GGUF (same metadata, dequantized tensors, 2 of 30 layers), where llama.cpp matches
transformers to ~2e-4, and on the Q4_1 file itself, whose quantized matmuls set a floor of mean KL ~6e-3.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ropeconv.errors import InputError
from ropeconv.fixtures import smollm2
from ropeconv.parity.probe import Pass, probe_ids
from ropeconv.parity.report import compare
from ropeconv.parity.runtimes import llamacpp

WORK = Path(os.environ.get("ROPECONV_WORK", Path(__file__).resolve().parents[3] / "work"))
CPU = torch.device("cpu")
VOCAB = 49152
ORIGINAL_CTX = 8192
N = 256
CROSS = Pass("probe", ORIGINAL_CTX - N // 2, N)  # positions 8064–8319
LINEAR_X4 = dict(rope_freq_scale=0.25)  # llama.cpp's own linear scaling (the file declares no scaling type: linear)


def _has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


needs_llama_cpp = pytest.mark.skipif(not _has_llama_cpp(), reason="llama-cpp-python not installed (ropeconv[gguf])")


def f32_twin(src: Path, dst: Path, n_layers: int, kv: dict | None = None, extra: dict | None = None) -> Path:
    """The GGUF with its metadata unchanged but block_count = n_layers and every tensor dequantized to float32.

    kv: {key: (GGUFValueType, value)} added; extra: {tensor name: float32 array} added.
    """
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(src)
    arch = reader.get_field("general.architecture").contents()
    writer = gguf.GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        vtype = field.types[0]
        value = field.contents()
        if field.name == f"{arch}.block_count":
            value = n_layers
        elif field.name == "general.file_type":
            value = int(gguf.LlamaFileType.ALL_F32)
        writer.add_key_value(field.name, value, vtype,
                             sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for key, (vtype, value) in (kv or {}).items():
        writer.add_key_value(key, value, vtype)
    for name, array in (extra or {}).items():
        writer.add_tensor(name, np.asarray(array, dtype=np.float32))
    for t in reader.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_layers:
            continue
        writer.add_tensor(t.name, np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.fixture(scope="module")
def smol() -> Path:
    return smollm2.materialize_hf(WORK / "smollm2-135m")


@pytest.fixture(scope="module")
def twin(module_tmp) -> Path:
    return f32_twin(smollm2.gguf_path(), module_tmp / "smol-f32-2l.gguf", n_layers=2)


def plan_reference(smol: Path, plan, ids: torch.Tensor, pass_: Pass, n_layers: int | None = None) -> torch.Tensor:
    """transformers on the same weights, rotary from a ropeconv plan."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging

    from ropeconv.parity.reference import install_plan_rotary
    from ropeconv.parity.runtimes import hf

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(smol, **({"num_hidden_layers": n_layers} if n_layers else {}))
    model = AutoModelForCausalLM.from_pretrained(smol, config=config, dtype=torch.float32).eval()
    assert install_plan_rotary(model, plan) > 0
    return hf.logits(model, ids[:, : pass_.n_tokens], pass_.position_ids())


def make_plan(smol: Path, method: str, **options):
    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.methods import get
    from ropeconv.methods.base import ExtendRequest

    return get(method).plan(load_checkpoint(smol).scheme, ExtendRequest(factor=4.0, options=options))


def linear_x4_reference(smol: Path, ids: torch.Tensor, pass_: Pass, n_layers: int | None = None) -> torch.Tensor:
    return plan_reference(smol, make_plan(smol, "linear"), ids, pass_, n_layers)


def run(gguf: Path, ids: torch.Tensor, pass_: Pass, n_ctx: int = N, **overrides) -> torch.Tensor:
    handle = llamacpp.load(gguf, CPU, n_ctx, **overrides)
    try:
        return llamacpp.logits(handle, ids, pass_.position_ids())
    finally:
        handle.close()


def worst(pass_: Pass, ref: torch.Tensor, cand: torch.Tensor) -> tuple[float, float, float]:
    bands = compare(pass_, ref, cand, ORIGINAL_CTX)
    return (max(b.max_abs_logit for b in bands), max(b.mean_kl for b in bands), min(b.top1 for b in bands))


@needs_llama_cpp
@pytest.mark.slow
def test_tokens_sit_at_the_given_positions_even_beyond_n_ctx(capfd):
    import llama_cpp

    handle = llamacpp.load(smollm2.gguf_path(), CPU, 64)
    try:
        first = 9000  # past both n_ctx (64 cells) and the trained context (8192)
        out = llamacpp.logits(handle, probe_ids(VOCAB, 40), torch.arange(first, first + 40).unsqueeze(0))
        memory = llama_cpp.llama_get_memory(handle.llama._ctx.ctx)
        # llama.cpp's own record of where it put the tokens (Llama.eval would have used 0..39)
        assert llama_cpp.llama_memory_seq_pos_min(memory, 0) == first
        assert llama_cpp.llama_memory_seq_pos_max(memory, 0) == first + 39
        assert out.shape == (40, VOCAB) and out.dtype == torch.float32 and torch.isfinite(out).all()
        # a second call starts from an empty memory: same tokens, same logits, bit for bit
        again = llamacpp.logits(handle, probe_ids(VOCAB, 40), torch.arange(first, first + 40).unsqueeze(0))
        assert torch.equal(out, again)
    finally:
        handle.close()
    assert capfd.readouterr().err == ""  # llama.cpp stays quiet


@needs_llama_cpp
@pytest.mark.slow
def test_n_ctx_only_sizes_the_cache(twin, capfd):
    ids = probe_ids(VOCAB, N)
    small = run(twin, ids, CROSS, n_ctx=N, **LINEAR_X4)
    holds_positions = run(twin, ids, CROSS, n_ctx=CROSS.last_position + 1, **LINEAR_X4)
    assert torch.equal(small, holds_positions)
    # n_ctx 8320 > the file's 8192 makes llama.cpp warn; llama-cpp-python 0.3.36 would print it with verbose=False
    assert capfd.readouterr().err == ""


@needs_llama_cpp
@pytest.mark.slow
def test_float32_twin_matches_the_plan_and_an_unscaled_run_does_not(smol, twin):
    ids = probe_ids(VOCAB, N)
    reference = linear_x4_reference(smol, ids, CROSS, n_layers=2)

    max_abs, _, top1 = worst(CROSS, reference, run(twin, ids, CROSS, **LINEAR_X4))
    assert max_abs <= 1e-2 and top1 >= 0.99, (max_abs, top1)  # measured 2.3e-4, 100%

    max_abs, kl, _ = worst(CROSS, reference, run(twin, ids, CROSS))  # the file's own, unscaled rope
    assert max_abs > 1.0 and kl > 1e-2, (max_abs, kl)  # measured 12, KL 4.9e-2

    max_abs, _, _ = worst(CROSS, reference, run(twin, ids, CROSS, rope_freq_scale=0.25 / 1.01))  # factor 1% off
    assert max_abs > 5e-2, max_abs  # measured 0.16


@needs_llama_cpp
@pytest.mark.slow
def test_quantized_gguf_parity_sits_on_its_noise_floor(smol):
    ids = probe_ids(VOCAB, N)
    reference = linear_x4_reference(smol, ids, CROSS)
    gguf = smollm2.gguf_path()

    _, kl, top1 = worst(CROSS, reference, run(gguf, ids, CROSS, **LINEAR_X4))
    assert kl <= 2e-2 and top1 >= 0.8, (kl, top1)  # measured KL 5.8e-3, top-1 90%: Q4_1 × q8 activations

    _, kl, top1 = worst(CROSS, reference, run(gguf, ids, CROSS))
    assert kl >= 0.1 and top1 <= 0.5, (kl, top1)  # measured KL 0.38–0.41, top-1 21–30%


def test_missing_llama_cpp_is_an_input_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(InputError, match=r"pip install 'ropeconv\[gguf\]'"):
        llamacpp.load(tmp_path / "model.gguf", CPU, 64)


@needs_llama_cpp
def test_unloadable_file_is_one_line_input_error(tmp_path, capfd):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(InputError) as info:
        llamacpp.load(bad, CPU, 64)
    message = str(info.value)
    assert "\n" not in message and "broken.gguf" in message
    assert "GGUF version" in message  # llama.cpp's root cause, not llama-cpp-python's "Failed to load model"
    with pytest.raises(InputError, match="not found"):
        llamacpp.load(tmp_path / "absent.gguf", CPU, 64)
    assert capfd.readouterr().err == ""


@needs_llama_cpp
@pytest.mark.slow
def test_positions_llama_cpp_cannot_take_are_refused():
    handle = llamacpp.load(smollm2.gguf_path(), CPU, 8)
    try:
        ids = probe_ids(VOCAB, 4)
        with pytest.raises(ValueError, match="contiguous"):
            llamacpp.logits(handle, ids, torch.tensor([[0, 1, 3, 4]]))
        with pytest.raises(ValueError, match="KV cells"):
            llamacpp.logits(handle, probe_ids(VOCAB, 300), torch.arange(300).unsqueeze(0))
    finally:
        handle.close()


@needs_llama_cpp
@pytest.mark.slow
def test_longrope_gets_a_context_on_the_side_of_each_pass(smol, tmp_path):
    """llama.cpp picks LongRoPE's factor set by n_ctx; run_passes sizes the context so it matches transformers."""
    import gguf

    from ropeconv.parity.probe import plan_passes

    short = [1.0 + 0.25 * j / 31 for j in range(32)]
    long = [1.0 + 3.0 * j / 31 for j in range(32)]
    factors = tmp_path / "factors.json"
    factors.write_text(json.dumps({"short_factor": short, "long_factor": long}))
    plan = make_plan(smol, "longrope", factors=factors)
    f32 = gguf.GGUFValueType.FLOAT32
    longrope = f32_twin(
        smollm2.gguf_path(), tmp_path / "smol-longrope-2l.gguf", n_layers=2,
        kv={"llama.rope.scaling.type": (gguf.GGUFValueType.STRING, "longrope"),
            "llama.rope.scaling.original_context_length": (gguf.GGUFValueType.UINT32, ORIGINAL_CTX),
            "llama.rope.scaling.attn_factor": (f32, plan.attention_factor)},
        extra={"rope_factors_long.weight": long, "rope_factors_short.weight": short},
    )
    passes = plan_passes(plan, N)  # short 0–255, probe 8064–8319
    assert [p.name for p in passes] == ["short", "probe"]
    ids = probe_ids(VOCAB, N)

    candidate = llamacpp.run_passes(longrope, CPU, ids, passes)
    for p, cand in zip(passes, candidate):
        max_abs, _, top1 = worst(p, plan_reference(smol, plan, ids, p, n_layers=2), cand)
        assert max_abs <= 1e-2 and top1 >= 0.99, (p.name, max_abs, top1)

    # the probe in a context of only its own 256 tokens: llama.cpp takes the short set, transformers the long
    probe = passes[1]
    max_abs, _, _ = worst(probe, plan_reference(smol, plan, ids, probe, n_layers=2), run(longrope, ids, probe, n_ctx=N))
    assert max_abs > 0.1, max_abs
