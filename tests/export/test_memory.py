"""Peak memory does not grow with model size: it is a constant plus (at most) the largest tensor.

Synthetic checkpoints are written straight with safetensors (no model is built): a tiny llama that matches
the config, plus extra tensors of 8 MiB each, 4 (32 MiB) against 48 (384 MiB). Each conversion
runs `ropeconv extend --no-verify` as the only child of a small wrapper process, which reports the
child's peak RSS (ru_maxrss from os.wait4).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

MiB = 1024 * 1024
ROWS, COLS = 2048, 1024  # float32: 8 MiB per tensor
TENSOR_BYTES = ROWS * COLS * 4
SMALL_N, LARGE_N = 4, 48
SLACK = 32 * MiB
ABSOLUTE_LIMIT = 512 * MiB
TIMEOUT_S = 180.0

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 512,
    "max_position_embeddings": 64,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def ropeconv_cmd() -> list[str]:
    script = Path(sys.executable).with_name("ropeconv")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "ropeconv.cli.main"]


def _tiny_llama(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """CONFIG's llama tensors (a few KiB): the model around the big tensors, which ride along as extras."""
    h, i, v, kv = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"], 32
    tensors = {"model.embed_tokens.weight": torch.randn(v, h, generator=gen), "lm_head.weight": torch.randn(v, h, generator=gen),
               "model.norm.weight": torch.ones(h)}
    for n in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                  "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}
        tensors.update({p + name + ".weight": torch.randn(*shape, generator=gen) for name, shape in shapes.items()})
        tensors[p + "input_layernorm.weight"] = torch.ones(h)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(h)
    return tensors


def make_synthetic(root: Path, n_big: int) -> Path:
    """A tiny llama plus n_big distinct 8 MiB float32 tensors and a few small ones, in one safetensors file."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(CONFIG, indent=2))
    gen = torch.Generator().manual_seed(n_big)
    tensors = _tiny_llama(gen)  # what the config's family needs (extend checks the config against the tensors)
    tensors.update({f"model.layers.{i}.blob.weight": torch.randn(ROWS, COLS, generator=gen) for i in range(n_big)})
    tensors["model.small.bf16"] = torch.randn(16, 64, generator=gen).to(torch.bfloat16)
    tensors["model.small.i64"] = torch.arange(37, dtype=torch.int64)
    save_file(tensors, root / "model.safetensors", metadata={"format": "pt"})
    del tensors
    return root


# A fresh, small parent for the measured process. Measuring a direct child of pytest would be wrong:
# Linux carries the pre-exec memory high-water mark into ru_maxrss, and a (v)forked child of pytest
# inherits pytest's own peak (the synthetic tensors were built here), whatever ropeconv itself uses.
RSS_WRAPPER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
proc.returncode = code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as fh:
    fh.write(str(usage.ru_maxrss))
sys.exit(code if code >= 0 else 128 - code)
"""


def peak_rss_of(args: list[str], tmp: Path) -> tuple[int, int, float, str]:
    """Run a command; (exit code, its peak RSS in bytes, seconds, stderr)."""
    report = tmp / "maxrss.txt"
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", RSS_WRAPPER, str(report), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"{args} ran past {TIMEOUT_S}s") from None
    elapsed = time.monotonic() - start
    maxrss = int(report.read_text()) * (1 if sys.platform == "darwin" else 1024)  # Linux reports KiB
    report.unlink()
    return proc.returncode, maxrss, elapsed, stderr


def output_files(out: Path) -> list[Path]:
    index = out / "model.safetensors.index.json"
    if index.is_file():
        return [out / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [out / "model.safetensors"]


def assert_byte_identical(base: Path, out: Path) -> None:
    """Every tensor of the output has the base's name, dtype, shape and bytes (and nothing else is there)."""
    with safe_open(base / "model.safetensors", framework="pt") as src:
        src_keys = set(src.keys())
        where = {}
        for f in output_files(out):
            with safe_open(f, framework="pt") as dst:
                for k in dst.keys():
                    assert k not in where, f"{k} appears in two output files"
                    where[k] = f
        assert set(where) == src_keys
        for name in sorted(src_keys):
            a = src.get_tensor(name)
            with safe_open(where[name], framework="pt") as dst:
                b = dst.get_tensor(name)
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)), name


@pytest.fixture(scope="module")
def checkpoints(module_tmp):
    """~420 MiB, removed with the module's folder."""
    return {name: make_synthetic(module_tmp / name, n_big) for name, n_big in (("small", SMALL_N), ("large", LARGE_N))}


def convert(base: Path, out: Path, *extra: str) -> int:
    rc, rss, secs, err = peak_rss_of(
        ropeconv_cmd() + ["extend", str(base), "--method", "yarn", "--factor", "4", "--no-verify", "-q",
                          "-o", str(out), *extra],
        out.parent,
    )
    assert rc == 0, f"exit {rc}:\n{err}"
    assert err.strip() == "", f"-q run wrote to stderr:\n{err}"
    size = (base / "model.safetensors").stat().st_size
    print(f"\n{base.name}{' ' + ' '.join(extra) if extra else ''}: checkpoint {size / MiB:.1f} MiB, "
          f"peak RSS {rss / MiB:.1f} MiB, {secs:.2f}s")
    return rss


def test_peak_rss_is_constant_plus_largest_tensor(checkpoints, tmp_path):
    small = convert(checkpoints["small"], tmp_path / "small-out")
    large = convert(checkpoints["large"], tmp_path / "large-out")
    sharded = convert(checkpoints["large"], tmp_path / "large-sharded", "--max-shard-size", "100MB")
    growth = max(large, sharded) - small
    print(f"growth with model size: {growth / MiB:.1f} MiB for {(LARGE_N - SMALL_N) * TENSOR_BYTES / MiB:.0f} MiB "
          f"more weights (allowed: largest tensor {TENSOR_BYTES / MiB:.0f} MiB + {SLACK / MiB:.0f} MiB)")
    assert growth < TENSOR_BYTES + SLACK, f"peak RSS grows with model size: +{growth / MiB:.1f} MiB"
    for label, rss in (("small", small), ("large", large), ("large sharded", sharded)):
        assert rss < ABSOLUTE_LIMIT, f"{label}: peak RSS {rss / MiB:.1f} MiB ≥ {ABSOLUTE_LIMIT / MiB:.0f} MiB"

    assert_byte_identical(checkpoints["small"], tmp_path / "small-out")
    assert_byte_identical(checkpoints["large"], tmp_path / "large-out")
    assert_byte_identical(checkpoints["large"], tmp_path / "large-sharded")
    assert len(output_files(tmp_path / "large-sharded")) > 1, "--max-shard-size 100MB should shard 384 MiB"
    cfg = json.loads((tmp_path / "large-out" / "config.json").read_text())
    assert cfg["max_position_embeddings"] == 4 * CONFIG["max_position_embeddings"]
    for name in ("small-out", "large-out", "large-sharded"):
        shutil.rmtree(tmp_path / name)


GGUF_HIDDEN = 1024  # float32 q/k/v/o 4 MiB each, gate/up/down 8 MiB each: ~40 MiB per layer


def make_llama_layers(root: Path, n_layers: int) -> Path:
    """A real llama layout (so every tensor has a GGUF name) with a trained tokenizer, for HF → GGUF."""
    from ropeconv.fixtures.tokenizers import add_byte_level_bpe

    root.mkdir(parents=True)
    h, i = GGUF_HIDDEN, 2 * GGUF_HIDDEN
    config = dict(CONFIG, hidden_size=h, intermediate_size=i, num_attention_heads=8, num_key_value_heads=8,
                  num_hidden_layers=n_layers)
    (root / "config.json").write_text(json.dumps(config, indent=2))
    gen = torch.Generator().manual_seed(n_layers)
    tensors = {"model.embed_tokens.weight": torch.randn(512, h, generator=gen), "model.norm.weight": torch.ones(h),
               "lm_head.weight": torch.randn(512, h, generator=gen)}
    for n in range(n_layers):
        p = f"model.layers.{n}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[p + f"self_attn.{name}.weight"] = torch.randn(h, h, generator=gen)
        tensors[p + "mlp.gate_proj.weight"] = torch.randn(i, h, generator=gen)
        tensors[p + "mlp.up_proj.weight"] = torch.randn(i, h, generator=gen)
        tensors[p + "mlp.down_proj.weight"] = torch.randn(h, i, generator=gen)
        tensors[p + "input_layernorm.weight"] = torch.ones(h)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(h)
    save_file(tensors, root / "model.safetensors", metadata={"format": "pt"})
    del tensors
    return add_byte_level_bpe(root)


def _growth_of(tmp_path: Path, fmt: str, flag: str, kinds: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(small, large) peak RSS per kind: 1 and 10 llama layers (~360 MiB more weights) converted to fmt."""
    bases = {"small": make_llama_layers(tmp_path / "s", 1), "large": make_llama_layers(tmp_path / "l", 10)}
    peaks = {kind: tuple(convert(bases[label], tmp_path / f"{label}-{kind}", "--to", fmt, flag, kind)
                         for label in ("small", "large")) for kind in kinds}
    for kind, (small, large) in peaks.items():
        print(f"{fmt} {kind}: growth {(large - small) / MiB:.1f} MiB for 9 more layers (~360 MiB of weights)")
    return peaks


LARGEST = 2 * GGUF_HIDDEN * GGUF_HIDDEN * 4  # an 8 MiB float32 MLP matrix


def test_gguf_conversion_peak_rss_does_not_grow_with_model_size(tmp_path):
    for outtype, (small, large) in _growth_of(tmp_path, "gguf", "--outtype", ("f16", "q8_0")).items():
        # q8_0 quantizes a whole tensor in float32 numpy: a few copies of the largest tensor
        allowed = (4 if outtype == "q8_0" else 1) * LARGEST + SLACK
        assert large - small < allowed, f"{outtype}: peak RSS grows with model size: +{(large - small) / MiB:.1f} MiB"
        assert large < ABSOLUTE_LIMIT


def test_onnx_export_peak_rss_does_not_grow_with_model_size(tmp_path):
    """The ONNX weights stream into model.onnx one tensor at a time (transposed in row blocks)."""
    for dtype, (small, large) in _growth_of(tmp_path, "onnx", "--dtype", ("fp32", "fp16")).items():
        assert large - small < LARGEST + SLACK, f"{dtype}: peak RSS grows with model size: +{(large - small) / MiB:.1f} MiB"
        assert large < ABSOLUTE_LIMIT
    assert (tmp_path / "large-fp32" / "onnx" / "model.onnx").stat().st_size > 360 * MiB


def _rank64_adapter(base: Path, out: Path) -> Path:
    """Rank-64 LoRA factors on every linear of a make_llama_layers base, in peft's on-disk format."""
    from ropeconv.checkpoint import load_checkpoint

    out.mkdir()
    gen = torch.Generator().manual_seed(7)
    factors = {}
    for entry in load_checkpoint(base).tensors:
        module = entry.name.removesuffix(".weight")
        if module.endswith(("_proj",)):
            rows, cols = entry.shape
            factors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(64, cols, generator=gen) * 0.01
            factors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(rows, 64, generator=gen) * 0.01
    save_file(factors, out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 64, "lora_alpha": 128,
                                                         "bias": "none"}))
    return out


def test_lora_merge_peak_rss_does_not_grow_with_model_size(tmp_path):
    """Merging streams too: one base tensor and its factors at a time, whatever the model size."""
    peaks = []
    for label, layers in (("small", 1), ("large", 10)):
        base = make_llama_layers(tmp_path / label, layers)
        adapter = _rank64_adapter(base, tmp_path / f"{label}-adapter")
        peaks.append(convert(base, tmp_path / f"{label}-out", "--lora", str(adapter), "--force-method",
                             "--to", "safetensors,gguf", "--outtype", "f16"))
    small, large = peaks
    print(f"lora merge: growth {(large - small) / MiB:.1f} MiB for 9 more layers (~360 MiB of weights, "
          "~45 MiB of factors)")
    # the merged tensor, its bytes and a float32 working copy: a few times the largest tensor
    assert large - small < 3 * LARGEST + SLACK, f"peak RSS grows with model size: +{(large - small) / MiB:.1f} MiB"
    assert large < ABSOLUTE_LIMIT
