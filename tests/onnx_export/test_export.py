"""ONNX export: every architecture × method runs in onnxruntime — attention in its fused GroupQueryAttention
kernel — with the plan's position math, through its KV cache, beyond the original context; and verify fails once
the math is taken out of the graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from ropeconv.capabilities import family_cells
from ropeconv.checkpoint import load_checkpoint
from ropeconv.families.lookup import ARCHS
from ropeconv.onnx_export.layouts import LAYOUTS
from ropeconv.onnx_export.rotary import default_constants
from ropeconv.parity.runtimes import ort as ort_runtime
from ropeconv.positions import RopePlan
from tests.conftest import ORIGINAL_CTX, assert_refused, default_cells, listing, make_tiny, read_json, run_cli
from tests.parity.test_archs import TOKENS
from tests.parity.test_archs import extend as extend_hf

ROPE_ARCHS = sorted(a for a in LAYOUTS if ARCHS[a].position == "rope")  # ALiBi and tables: onnx_export/test_positions.py
# every (family, method) the matrix claims for ONNX (all of them: the graph computes any plan), none aside (no
# position math to strip; the RoPE families' none cells are not run per family)
CASES = sorted(((a, m) for a, m in family_cells("onnx", "rope") if m != "none"), key=lambda c: c[0])


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {arch: make_tiny(root, arch) for arch in ROPE_ARCHS}


def extend(base: Path, out: Path, arch: str, method: str, *extra: str) -> int:
    return extend_hf(base, out, arch, method, "--to", "onnx", *extra)


def strip_position_math(model_path: Path, base: Path) -> None:
    """Put the base's unextended rope back into the graph: what an exporter that freezes or drops the
    extension ships. Only the rope/* constants change."""
    model = onnx.load(model_path)
    scheme = load_checkpoint(base).scheme
    plain = default_constants(scheme.theta, scheme.rotary_dim)
    changed = 0
    for init in model.graph.initializer:
        if init.name in plain:
            init.CopyFrom(numpy_helper.from_array(np.asarray(plain[init.name], dtype=numpy_helper.to_array(init).dtype),
                                                  init.name))
            changed += 1
    assert changed, "no rope/* constants found in the graph"
    onnx.save_model(model, model_path)


def op_types(model_path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(model_path, load_external_data=False).graph.node}


def op_count(model_path: Path, op_type: str) -> int:
    return sum(n.op_type == op_type for n in onnx.load(model_path, load_external_data=False).graph.node)


def attention_ops(model_path: Path) -> list[str]:
    """The attention kernels the graph runs (inside the If that picks the padded variant)."""
    graph = onnx.load(model_path, load_external_data=False).graph
    return [inner.op_type for n in graph.node if n.op_type == "If" for a in n.attribute for inner in a.g.node
            if inner.op_type == "GroupQueryAttention"]


@pytest.mark.parametrize("arch,method", default_cells(CASES, "onnx"))
def test_onnx_matches_transformers_beyond_the_original_context(bases, tmp_path, arch, method, capsys):
    out = tmp_path / "out"
    assert extend(bases[arch], out, arch, method) == 0
    manifest = read_json(out / "manifest.json")
    assert manifest["parity"]["onnx"]["passed"] is True
    model_path = out / "onnx" / "model.onnx"
    onnx.checker.check_model(str(model_path), full_check=True)

    capsys.readouterr()
    assert run_cli("verify", model_path, "--tokens", TOKENS, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runtime"] == "onnxruntime" and report["passed"]
    print(f"{arch} × {method}: max|Δlogit| {report['max_abs_logit']:.3g}")
    # the fused kernel, twice per layer (with and without the padding bias), and no scores of plain operators
    n_layers = read_json(bases[arch] / "config.json")["num_hidden_layers"]
    # (a mixture of experts' router takes one softmax per layer: no scores)
    routers = n_layers if LAYOUTS[arch].moe else 0
    assert len(attention_ops(model_path)) == 2 * n_layers and op_count(model_path, "Softmax") == routers
    assert any(b["first_position"] >= 2 * ORIGINAL_CTX for b in report["bands"]), "probe must reach 2× original"
    if manifest["plan"]["length_rule"] != "static":
        # both sides of the switch: a short pass wholly inside the original context
        assert any(b["pass_name"] == "short" and b["last_position"] < ORIGINAL_CTX for b in report["bands"])

    strip_position_math(model_path, bases[arch])
    assert run_cli("verify", model_path, "--tokens", TOKENS) == 1


def _graph_inputs(model_path: Path) -> dict[str, list]:
    model = onnx.load(model_path, load_external_data=False)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return {**{i.name: dims(i) for i in model.graph.input}, **{o.name: dims(o) for o in model.graph.output}}


def test_io_names_dynamic_axes_and_opset(bases, tmp_path):
    out = tmp_path / "out"
    assert extend(bases["llama"], out, "llama", "yarn") == 0
    model_path = out / "onnx" / "model.onnx"
    io = _graph_inputs(model_path)
    assert io["input_ids"] == ["batch_size", "sequence_length"]
    assert io["attention_mask"] == ["batch_size", "total_sequence_length"]
    assert io["position_ids"] == ["batch_size", "sequence_length"]
    assert io["past_key_values.1.value"] == ["batch_size", 2, "past_sequence_length", 16]
    assert io["present.0.key"] == ["batch_size", 2, "total_sequence_length", 16]
    assert io["logits"] == ["batch_size", "logits_sequence_length", 512]
    assert io["num_logits_to_keep"] == []
    opsets = {o.domain: o.version for o in onnx.load(model_path, load_external_data=False).opset_import}
    assert opsets[""] >= 18 and opsets["com.microsoft"] == 1
    # the directory is self-contained for onnxruntime-genai and optimum
    assert {"config.json", "genai_config.json", "generation_config.json"} <= set(listing(out / "onnx"))
    genai = read_json(out / "onnx" / "genai_config.json")
    assert genai["model"]["context_length"] == 4 * ORIGINAL_CTX
    assert genai["model"]["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"


def _session(out: Path):
    return ort_runtime.Decoder(ort_runtime.session(out / "onnx" / "model.onnx"))


@pytest.mark.parametrize("method", ["yarn", "longrope", "linear"])
def test_decoding_through_the_cache_equals_a_full_prefill(bases, tmp_path, method):
    """Static rules, and LongRoPE once the prefill is past the switch: the cached keys carry the same
    rotation a full prefill gives them."""
    out = tmp_path / "out"
    assert extend(bases["llama"], out, "llama", method) == 0
    decoder = _session(out)
    n = 2 * ORIGINAL_CTX
    ids = torch.randint(16, 512, (1, n), generator=torch.Generator().manual_seed(3))
    positions = torch.arange(n)[None]
    full = ort_runtime.decode(decoder, ids, positions, 0)
    stepped = ort_runtime.decode(decoder, ids, positions, 16)
    assert (full - stepped).abs().max().item() < 1e-4
    # the cache is really used: decoding the last tokens without it gives other logits
    alone = ort_runtime.decode(decoder, ids[:, -1:], positions[:, -1:], 0)
    assert (alone[0] - full[-1]).abs().max().item() > 1e-2


@pytest.mark.parametrize("arch,overrides", [("qwen2", {}), ("gemma2", {"sliding_window": 24})])
def test_batch_axis_is_dynamic_and_left_padding_is_masked(bases, tmp_path, arch, overrides):
    """Two sequences in one batch give each one's own logits; a left-padded row (attention_mask 0 on the pads,
    positions counted from its first real token) gives the unpadded sequence's logits, in the prefill and in
    decode steps through the cache (the fused kernel's padded variant; gemma2: soft-cap and a sliding window
    shorter than the sequence on top of the padding bias)."""
    base = make_tiny(tmp_path, arch, **overrides) if overrides else bases[arch]
    out = tmp_path / "out"
    assert extend(base, out, arch, "yarn", "--no-verify") == 0
    sess = ort_runtime.session(out / "onnx" / "model.onnx")
    decoder = ort_runtime.Decoder(sess)
    n, pad, steps = 80, 5, 3
    ids = torch.randint(16, 512, (2, n + steps), generator=torch.Generator().manual_seed(5)).numpy()
    positions = np.arange(n)[None].repeat(2, 0)
    alone = [ort_runtime.decode(decoder, torch.from_numpy(ids[i : i + 1, :n]), torch.from_numpy(positions[:1]), 0)
             .numpy() for i in range(2)]
    empty = np.zeros((2, decoder.kv_heads, 0, decoder.head_dim), np.float32)
    feeds = {"input_ids": ids[:, :n], "position_ids": positions, "attention_mask": np.ones((2, n), np.int64),
             **{name: empty for name in decoder.past_names}}
    batched = sess.run(["logits"], feeds)[0]
    assert np.abs(batched[0] - alone[0]).max() < 1e-4 and np.abs(batched[1] - alone[1]).max() < 1e-4

    # row 0 unpadded, row 1 the same length with its first `pad` tokens padding
    rows = [ids[0, : n + steps], ids[1, : n + steps - pad]]
    prompt = np.stack([rows[0][:n], np.concatenate([np.zeros(pad, np.int64), rows[1][: n - pad]])])
    mask = np.ones((2, n), np.int64)
    mask[1, :pad] = 0
    pos = np.stack([np.arange(n), np.concatenate([np.ones(pad, np.int64), np.arange(n - pad)])])
    outputs = [o.name for o in sess.get_outputs()]
    result = dict(zip(outputs, sess.run(None, {"input_ids": prompt, "position_ids": pos, "attention_mask": mask,
                                                **{name: empty for name in decoder.past_names}})))
    got = [[result["logits"][0]], [result["logits"][1, pad:]]]
    for j in range(steps):
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        feeds = {"input_ids": np.array([[rows[0][n + j]], [rows[1][n - pad + j]]]),
                 "position_ids": np.array([[n + j], [n - pad + j]]), "attention_mask": mask,
                 **{name: result[name.replace("past_key_values.", "present.")] for name in decoder.past_names}}
        result = dict(zip(outputs, sess.run(None, feeds)))
        got[0].append(result["logits"][0])
        got[1].append(result["logits"][1])
    for i, row in enumerate(rows):
        expected = ort_runtime.decode(decoder, torch.from_numpy(row[None]), torch.arange(len(row))[None], steps).numpy()
        assert np.abs(np.concatenate(got[i]) - expected).max() < 1e-4, i


def test_logits_of_the_last_positions_only_when_asked(bases, tmp_path):
    """num_logits_to_keep (transformers' logits_to_keep): 0 or absent → every position; k → the last k, equal to
    the full call's last k rows."""
    out = tmp_path / "out"
    assert extend(bases["llama"], out, "llama", "yarn", "--no-verify") == 0
    sess = ort_runtime.session(out / "onnx" / "model.onnx")
    decoder = ort_runtime.Decoder(sess)
    n = 2 * ORIGINAL_CTX
    empty = np.zeros((1, decoder.kv_heads, 0, decoder.head_dim), np.float32)
    feeds = {"input_ids": np.random.default_rng(0).integers(16, 512, (1, n)), "position_ids": np.arange(n)[None],
             "attention_mask": np.ones((1, n), np.int64), **{name: empty for name in decoder.past_names}}
    full = sess.run(["logits"], feeds)[0]
    assert full.shape == (1, n, 512)
    assert sess.run(["logits"], dict(feeds, num_logits_to_keep=np.array(0)))[0].shape == (1, n, 512)
    last = sess.run(["logits"], dict(feeds, num_logits_to_keep=np.array(1)))[0]
    three = sess.run(["logits"], dict(feeds, num_logits_to_keep=np.array(3)))[0]
    assert last.shape == (1, 1, 512) and three.shape == (1, 3, 512)
    assert np.abs(last[0, 0] - full[0, -1]).max() < 1e-5 and np.abs(three[0] - full[0, -3:]).max() < 1e-5


def test_dynamic_ntk_is_computed_per_call_not_frozen(bases, tmp_path):
    """The base follows each call's running length: below, at 2× and at 4× the original context (prefill then
    decode steps) the graph matches the plan evaluated at that length; a base frozen at any one length
    would miss the others."""
    from ropeconv.parity.reference import load_reference
    from ropeconv.parity.runtimes.hf import logits as hf_logits

    out = tmp_path / "out"
    assert extend(bases["llama"], out, "llama", "dynamic") == 0
    plan = RopePlan.from_json(read_json(out / "manifest.json")["plan"])
    decoder = _session(out)
    model = load_reference(bases["llama"], plan, torch.device("cpu"))
    for n in (ORIGINAL_CTX // 2, 2 * ORIGINAL_CTX, 4 * ORIGINAL_CTX):
        ids = torch.randint(16, 512, (1, n), generator=torch.Generator().manual_seed(n))
        positions = torch.arange(n)[None]
        ours = ort_runtime.decode(decoder, ids, positions, 4)
        reference = hf_logits(model, ids, positions, 4)
        assert (ours - reference).abs().max().item() < 1e-3, n


@pytest.mark.parametrize("arch,window", [("mistral", 24), ("gemma2", 24), ("qwen2", 24), ("qwen3", 24)])
def test_sliding_windows_are_applied(tmp_path, arch, window):
    """A window shorter than the probe changes attention; the graph must apply it where transformers does."""
    extra = {"use_sliding_window": True, "max_window_layers": 1} if arch in ("qwen2", "qwen3") else {}
    base = make_tiny(tmp_path, arch, sliding_window=window, **extra)
    out = tmp_path / "out"
    assert extend(base, out, arch, "yarn") == 0
    assert read_json(out / "manifest.json")["parity"]["onnx"]["passed"]


def test_gpt_neox_sequential_residual(tmp_path):
    base = make_tiny(tmp_path, "gpt_neox", use_parallel_residual=False)
    out = tmp_path / "out"
    assert extend(base, out, "gpt_neox", "linear") == 0


def test_tied_embeddings(tmp_path):
    base = make_tiny(tmp_path, "llama", tie_word_embeddings=True)
    out = tmp_path / "out"
    assert extend(base, out, "llama", "yarn") == 0


def _judged_twice(report: dict) -> tuple[dict, dict]:
    """The strict rows (the float32 twin) and the quantized-gate rows (the file itself)."""
    strict = [b for b in report["bands"] if not b["quantized"]]
    gated = [b for b in report["bands"] if b["quantized"]]
    assert strict and gated and {b["pass_name"] for b in gated} >= {"q-probe"}
    return ({"max_abs_logit": max(b["max_abs_logit"] for b in strict)},
            {"mean_kl": max(b["mean_kl"] for b in gated), "top1": min(b["top1"] for b in gated)})


def test_fp16_computes_in_float16_judged_through_a_float32_twin(bases, tmp_path, capsys):
    """--dtype fp16: float16 weights, activations, fused attention and KV cache (norms and logits float32),
    run here on onnxruntime's CPU kernels; strict through a float32 export, the file by the quantized gate."""
    out = tmp_path / "out"
    capsys.readouterr()
    assert extend(bases["llama"], out, "llama", "yarn", "--dtype", "fp16", "--json") == 0
    model = onnx.load(out / "onnx" / "model.onnx")
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert types["model.layers.0.self_attn.q_proj.weight"] == onnx.TensorProto.FLOAT16
    assert types["model.norm.weight"] == onnx.TensorProto.FLOAT  # norms stay float32
    io = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert io["past_key_values.0.key"] == io["present.1.value"] == onnx.TensorProto.FLOAT16
    assert io["logits"] == onnx.TensorProto.FLOAT
    report = json.loads(capsys.readouterr().out)["parity"]
    strict, gated = _judged_twice(report)
    print(f"fp16: twin max|Δlogit| {strict['max_abs_logit']:.3g}; file KL {gated['mean_kl']:.3g} top-1 "
          f"{gated['top1']:.1%}")
    assert report["passed"]
    assert (out / "onnx" / "model.onnx").stat().st_size < 0.6 * (2 * 64 * 64 * 4 * 2 * 4 + 512 * 64 * 4 * 2)


def test_int4_is_onnxruntimes_own_matmulnbits_judged_twice(bases, tmp_path, capsys):
    """--dtype int4: every MatMul weight as MatMulNBits blocks byte for byte what onnxruntime's
    MatMulNBitsQuantizer makes of the float32 export; strict through that float32 export, the file by the
    quantized gate against transformers running the file's own decoded weights (decoded as onnxruntime's kernel
    reads them) — against the unquantized base the 4-bit rounding alone would fail it — and a file without the
    extension fails that gate."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from ropeconv.onnx_export.export import export_file
    from ropeconv.parity.dequantized import decode_int4, tensors_of
    from ropeconv.parity.reference import load_reference
    from ropeconv.parity.runtimes.hf import logits as hf_logits

    base = bases["llama"]
    out = tmp_path / "out"
    capsys.readouterr()
    assert extend(base, out, "llama", "yarn", "--dtype", "int4", "--json") == 0
    report = json.loads(capsys.readouterr().out)["parity"]
    strict, gated = _judged_twice(report)
    print(f"int4: twin max|Δlogit| {strict['max_abs_logit']:.3g}; file KL {gated['mean_kl']:.3g} top-1 "
          f"{gated['top1']:.1%}")
    assert report["passed"]
    path = out / "onnx" / "model.onnx"
    ours = onnx.load(path)
    assert "MatMul" not in op_types(path) and sum(n.op_type == "MatMulNBits" for n in ours.graph.node) == 2 * 7 + 1

    plan = RopePlan.from_json(read_json(out / "manifest.json")["plan"])
    reference = onnx.load(export_file(base, plan, "fp32", tmp_path / "fp32.onnx"))
    quantizer = MatMulNBitsQuantizer(reference, block_size=32, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    theirs = {i.name: numpy_helper.to_array(i) for i in quantizer.model.model.graph.initializer}
    mine = {i.name: numpy_helper.to_array(i) for i in ours.graph.initializer}
    quantized = [n for n in mine if n.endswith("_Q4")]
    assert len(quantized) == 2 * 7 + 1
    for name in quantized + [n.replace("_Q4", "_scales") for n in quantized]:
        assert mine[name].shape == theirs[name].shape and np.array_equal(mine[name], theirs[name]), name

    # the decoding the quantized reference uses is the kernel's: MatMulNBits(identity) returns the matrix it holds
    from onnx import TensorProto, helper

    name = "model.layers.1.mlp.down_proj.weight"
    k, n = 128, 64
    node = helper.make_node("MatMulNBits", ["eye", f"{name}_Q4", f"{name}_scales"], ["w"], domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=32)
    graph = helper.make_graph([node], "decode", [helper.make_tensor_value_info("eye", TensorProto.FLOAT, [k, k])],
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, [k, n])],
                              initializer=[numpy_helper.from_array(mine[f"{name}_{s}"], f"{name}_{s}")
                                           for s in ("Q4", "scales")])
    kernel = ort_runtime._ort().InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
                          ir_version=9).SerializeToString(), providers=["CPUExecutionProvider"])
    held = kernel.run(None, {"eye": np.eye(k, dtype=np.float32)})[0]
    assert np.array_equal(held, decode_int4(mine[f"{name}_Q4"], mine[f"{name}_scales"], k))

    # what the q- rows would be against the unquantized base: the 4-bit rounding of this random model alone
    ids = torch.randint(16, 512, (1, 3 * ORIGINAL_CTX), generator=torch.Generator().manual_seed(7))
    positions = torch.arange(ids.shape[1])[None]
    file = ort_runtime.decode(_session(out), ids, positions, 0).double().log_softmax(-1)
    kl = lambda ref: float((ref.exp() * (ref - file)).sum(-1).mean())  # noqa: E731
    cpu = torch.device("cpu")
    against_base = kl(hf_logits(load_reference(base, plan, cpu), ids, positions, 0).double().log_softmax(-1))
    decoded = load_reference(base, plan, cpu, weights=tensors_of(path, base, plan))
    against_own = kl(hf_logits(decoded, ids, positions, 0).double().log_softmax(-1))
    print(f"int4 file KL against the base {against_base:.3g}, against its own decoded weights {against_own:.3g}")
    assert against_base > 0.05 and against_own < 0.01

    strip_position_math(path, base)
    assert run_cli("verify", path, "--tokens", TOKENS) == 1


def test_weights_beyond_the_protobuf_limit_go_to_external_data(bases, tmp_path, monkeypatch):
    from ropeconv.onnx_export import plan

    monkeypatch.setattr(plan, "MAX_INLINE_BYTES", 1000)
    out = tmp_path / "out"
    assert extend(bases["gpt_neox"], out, "gpt_neox", "yarn") == 0
    assert (out / "onnx" / "model.onnx.data").is_file()
    assert (out / "onnx" / "model.onnx").stat().st_size < 100_000
    assert read_json(out / "manifest.json")["formats"]["onnx"]["external_data"] is True
    onnx.checker.check_model(str(out / "onnx" / "model.onnx"), full_check=True)
    assert run_cli("verify", out, "--tokens", TOKENS) == 0


def test_reruns_are_byte_identical(bases, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert extend(bases["qwen2"], a, "qwen2", "longrope", "--no-verify") == 0
    assert extend(bases["qwen2"], b, "qwen2", "longrope", "--no-verify") == 0
    assert (a / "onnx" / "model.onnx").read_bytes() == (b / "onnx" / "model.onnx").read_bytes()


def test_all_formats_from_one_pass(bases, tmp_path, capsys):
    from tests.conftest import add_byte_level_tokenizer

    base = add_byte_level_tokenizer(make_tiny(tmp_path, "llama", name="tok"))
    out = tmp_path / "out"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "safetensors,gguf,onnx",
                   "--outtype", "f32", "-o", out, "--tokens", TOKENS, "-q") == 0
    manifest = read_json(out / "manifest.json")
    assert set(manifest["parity"]) == {"safetensors", "gguf", "onnx"}
    assert all(p["passed"] for p in manifest["parity"].values())
    assert "tokenizer.json" in listing(out / "onnx")
    capsys.readouterr()
    assert run_cli("verify", out, "--tokens", TOKENS, "--json") == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r["runtime"] for r in reports] == ["transformers", "llama.cpp", "onnxruntime"]


def test_phi3_takes_any_method_in_onnx_where_its_config_cannot(bases, tmp_path):
    out = tmp_path / "out"
    assert extend(bases["phi3"], out, "phi3", "yarn") == 0
    assert read_json(out / "onnx" / "config.json") == read_json(bases["phi3"] / "config.json")


def test_verify_finds_the_reference_in_the_output_when_the_base_is_gone(bases, tmp_path, capsys):
    import shutil

    base = shutil.copytree(bases["llama"], tmp_path / "moved")
    out = tmp_path / "out"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "safetensors,onnx", "-o", out,
                   "--tokens", TOKENS, "-q") == 0
    shutil.rmtree(base)
    capsys.readouterr()
    assert run_cli("verify", out / "onnx" / "model.onnx", "--tokens", TOKENS, "--json") == 0
    assert "not found" in " ".join(json.loads(capsys.readouterr().out)["notes"])


def _without_up_proj(tmp_path: Path) -> Path:
    from safetensors.torch import load_file, save_file

    base = make_tiny(tmp_path, "llama")
    tensors = load_file(base / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    return base


def _gguf_base(tmp_path: Path) -> Path:
    base = tmp_path / "x.gguf"
    base.write_bytes(b"GGUF")
    return base


YARN = ["--method", "yarn", "--factor", "4"]
# case: (how to make the base, the arguments, a word the one error line must contain)
BAD = {
    "dtype without onnx": (None, YARN + ["--dtype", "fp16"], "--dtype"),
    "unknown dtype": (None, YARN + ["--to", "onnx", "--dtype", "int3"], "dtype"),
    "onnx from a GGUF base": (_gguf_base, YARN + ["--to", "onnx"], "gguf"),
    "unsupported activation": (lambda t: make_tiny(t, "llama", hidden_act="mish"), YARN + ["--to", "onnx"], "mish"),
    "missing tensor": (_without_up_proj, YARN + ["--to", "onnx"], "up_proj"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_onnx_requests_exit_2_with_one_line_and_write_nothing(bases, tmp_path, case, capsys):
    make_base, args, word = BAD[case]
    base = make_base(tmp_path) if make_base else bases["llama"]
    out = tmp_path / "out"
    before = listing(tmp_path)
    capsys.readouterr()
    rc = run_cli("extend", base, *args, "-o", out)
    assert_refused(capsys, rc, out, before, mentions=(word,))


def test_verify_of_a_foreign_onnx_is_refused(tmp_path, capsys):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    onnx.save_model(helper.make_model(graph), path)
    before = listing(tmp_path)
    capsys.readouterr()
    rc = run_cli("verify", path)
    assert_refused(capsys, rc, tmp_path / "nothing", before, mentions=("ropeconv.plan",))


def test_every_layout_is_a_known_architecture():
    assert set(LAYOUTS) == set(ARCHS)


def test_float16_overflow_is_refused_not_written_as_inf(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    base = make_tiny(tmp_path, "llama")
    weights = load_file(base / "model.safetensors")
    weights["model.layers.1.self_attn.o_proj.weight"][7, 2] = 1e6  # fine in float32
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    before = listing(tmp_path)
    capsys.readouterr()
    # found mid-stream (-q: no progress lines before the error), and the staged output is removed
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "onnx", "--dtype", "fp16", "-o", out,
                 "-q")
    assert_refused(capsys, rc, out, before, mentions=("float16", "--dtype fp32"))
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "onnx", "-o", out, "-q") == 0
