"""ONNX outputs as deployed: memory that grows linearly with the prompt (the fused attention kernel), the
genai_config.json onnxruntime-genai reads matching the graph, and onnxruntime-genai's own generation loop
producing transformers' greedy tokens beyond the original context."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from ropeconv.positions import RopePlan
from tests.conftest import ORIGINAL_CTX, make_tiny, read_json, run_cli

# One prefill in a fresh process, onnxruntime's arena off so freed buffers are returned, one thread so no
# per-thread scratch scales the figure; the last position's logits only, as a deployment asks for them. Linux
# resets the peak RSS (VmHWM) when 5 is written to clear_refs: prints the peak over the run less the RSS before it,
# in KiB.
MEASURE = """
import sys
import numpy as np, onnxruntime as ort
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))
path, n = sys.argv[1], int(sys.argv[2])
options = ort.SessionOptions()
options.enable_cpu_mem_arena = False
options.intra_op_num_threads = 1
options.log_severity_level = 3
sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
past = {i.name: i for i in sess.get_inputs() if i.name.startswith("past_key_values.")}
def feeds(length):
    empty = {k: np.zeros((1, v.shape[1], 0, v.shape[3]), np.float32) for k, v in past.items()}
    return {"input_ids": np.full((1, length), 7, np.int64), "position_ids": np.arange(length)[None],
            "attention_mask": np.ones((1, length), np.int64), "num_logits_to_keep": np.array(1), **empty}
sess.run(None, feeds(8))
big = feeds(n)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
sess.run(None, big)
print(status("VmHWM:") - before)
"""
LENGTHS = (16 * ORIGINAL_CTX, 32 * ORIGINAL_CTX, 64 * ORIGINAL_CTX)
GENAI_NEW_TOKENS = 24


def prefill_growth_mb(model_path: Path) -> list[float]:
    growth = []
    for n in LENGTHS:
        out = subprocess.run([sys.executable, "-c", MEASURE, str(model_path), str(n)], capture_output=True, text=True,
                             check=True)
        growth.append(int(out.stdout.split()[-1]) / 1024)
    return growth


@pytest.fixture(scope="module")
def yarn_llama(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("deploy")
    from tests.conftest import add_byte_level_tokenizer

    base = add_byte_level_tokenizer(make_tiny(root, "llama"))
    out = root / "out"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "safetensors,onnx", "-o", out,
                   "--no-verify", "-q") == 0
    return base, out


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs to reset "
                    "the peak RSS")
def test_prefill_memory_grows_linearly_not_quadratically(yarn_llama, tmp_path):
    """Prefills of 16×, 32× and 64× the original context: each doubling of the length at most doubles the fused
    graph's peak (measured: 5.5, 11.2, 21.2 MB — the KV cache and activations, ~5 KB a token), where the
    plain-operator graph of the same model, holding heads × n × n scores per layer, grows about fourfold
    (measured: 67, 156, 597 MB) — which shows the measurement sees quadratic growth where there is some."""
    from ropeconv.onnx_export.export import export_file

    base, out = yarn_llama
    fused = prefill_growth_mb(out / "onnx" / "model.onnx")
    plan = RopePlan.from_json(read_json(out / "manifest.json")["plan"])
    plain = prefill_growth_mb(export_file(base, plan, "fp32", tmp_path / "plain.onnx", fused_attention=False))
    print(f"peak RSS growth MB at {LENGTHS}: fused {[round(g, 1) for g in fused]}, plain {[round(g, 1) for g in plain]}")
    doubling = lambda g: [g[1] / max(g[0], 0.5), g[2] / max(g[1], 0.5)]  # noqa: E731
    # linear: ×2 per doubling (allocator granularity: up to ×2.5), and small: 64× the context in under 48 MB
    assert max(doubling(fused)) <= 2.5 and fused[2] < 48, fused
    # quadratic: ×4 per doubling once the scores dominate
    assert doubling(plain)[1] >= 3, plain


def test_genai_config_matches_the_graph(yarn_llama):
    _, out = yarn_llama
    genai = read_json(out / "onnx" / "genai_config.json")
    graph = onnx.load(out / "onnx" / "model.onnx", load_external_data=False).graph
    inputs, outputs = {i.name: i for i in graph.input}, {o.name: o for o in graph.output}
    decoder = genai["model"]["decoder"]
    names = decoder["inputs"]
    layers = decoder["num_hidden_layers"]
    assert {names["input_ids"], names["attention_mask"], names["position_ids"]} <= set(inputs)
    assert {names["past_key_names"] % i for i in range(layers)} | {names["past_value_names"] % i for i in range(layers)} \
        == {n for n in inputs if n.startswith("past_key_values.")}
    assert decoder["outputs"]["logits"] in outputs
    assert {decoder["outputs"]["present_key_names"] % i for i in range(layers)} <= set(outputs)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(inputs["past_key_values.0.key"])[1::2] == [decoder["num_key_value_heads"], decoder["head_size"]]
    assert dims(outputs["logits"])[2] == genai["model"]["vocab_size"]
    attention = [inner for n in graph.node if n.op_type == "If" for a in n.attribute for inner in a.g.node
                 if inner.op_type == "GroupQueryAttention"]
    assert len(attention) == 2 * layers
    for node in attention:
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        assert attrs["num_heads"] == decoder["num_attention_heads"]
        assert attrs["kv_num_heads"] == decoder["num_key_value_heads"]
    plan = RopePlan.from_json(read_json(out / "manifest.json")["plan"])
    assert genai["model"]["context_length"] == genai["search"]["max_length"] == plan.target_ctx
    # the rope lives in the graph, not in genai_config.json (which has no field for it)
    assert "rope" not in json.dumps(genai)


def test_onnxruntime_genai_generates_transformers_greedy_tokens_beyond_the_original_context(yarn_llama):
    """onnxruntime-genai's own generation loop over OUT/onnx (genai_config.json, its KV-cache handling) gives
    the greedy continuation transformers gives for the safetensors output of the same extension, from a prompt
    longer than the original context."""
    og = pytest.importorskip("onnxruntime_genai")

    _, out = yarn_llama
    expected, produced = _greedy_in_both(og, out)
    print(f"transformers {expected}\nonnxruntime-genai {produced}")
    assert len(expected) == GENAI_NEW_TOKENS and produced == expected


def _greedy_in_both(og, out: Path) -> tuple[list[int], list[int]]:
    """Greedy continuations of a seeded prompt 1.5× the original context: transformers on the safetensors
    output, onnxruntime-genai's own generation loop on OUT/onnx."""
    import torch
    from transformers import AutoModelForCausalLM

    prompt = np.random.default_rng(1).integers(16, 512, 3 * ORIGINAL_CTX // 2).astype(np.int32)
    new = GENAI_NEW_TOKENS
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model.generate(torch.from_numpy(prompt.astype(np.int64))[None], max_new_tokens=new,
                                  do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    genai_model = og.Model(str(out / "onnx"))
    params = og.GeneratorParams(genai_model)
    params.set_search_options(max_length=len(prompt) + new, do_sample=False, min_length=len(prompt) + new)
    generator = og.Generator(genai_model, params)
    generator.append_tokens(prompt[None])
    while not generator.is_done():
        generator.generate_next_token()
    return expected, [int(t) for t in generator.get_sequence(0)][len(prompt):]


@pytest.mark.parametrize("arch", ["qwen3", "smollm3", "gemma3_text"])
def test_onnxruntime_genai_runs_the_model_types_written_for_the_newer_families(tmp_path, arch):
    """genai_config.json names onnxruntime-genai's own qwen3/smollm3/gemma3_text model types: its generation loop over
    the graph (per-head q/k norms; layers without rope; per-layer-type rope and sliding windows) gives transformers' greedy tokens beyond the original context."""
    og = pytest.importorskip("onnxruntime_genai")

    from tests.conftest import add_byte_level_tokenizer

    base = add_byte_level_tokenizer(make_tiny(tmp_path, arch))
    out = tmp_path / "out"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "safetensors,onnx", "-o", out,
                   "--no-verify", "-q") == 0
    assert read_json(out / "onnx" / "genai_config.json")["model"]["type"] == arch
    expected, produced = _greedy_in_both(og, out)
    assert len(expected) == GENAI_NEW_TOKENS and produced == expected
