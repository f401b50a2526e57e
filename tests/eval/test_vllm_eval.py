"""`ropeconv eval --runtime vllm`: passkey, ppl and RULER through vLLM's offline engine (eval.vllm_runtime, one
worker process in .venv-vllm per model). vLLM takes token ids, so both runtimes score the very same prompts: vLLM
must give transformers' log-probabilities (within parity.vllm's stated tolerance, MAX_ABS_LOGPROB) and its greedy
tokens. One engine start (~1 min on 2 cores); the refusals start nothing. Without .venv-vllm the running test skips
by hand and fails under `make test` (ROPECONV_REQUIRE_VLLM)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from ropeconv.eval import ruler
from ropeconv.eval import runtimes as rt
from ropeconv.parity import vllm
from tests.conftest import (
    add_byte_level_tokenizer,
    assert_refused,
    listing,
    make_tiny,
    read_json,
    run_cli,
    temp_sockets,
)

HD32 = dict(hidden_size=128, head_dim=32, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-eval")
    base = add_byte_level_tokenizer(make_tiny(root, "llama", name="tiny-llama-hd32", **HD32))
    made = {}
    for method in ("yarn", "dynamic"):  # ×8: 512 tokens, room for RULER's template (~280 tokens here)
        assert run_cli("extend", base, "--method", method, "--factor", "8", "--no-verify", "-q", "-o",
                       root / method) == 0
        made[method] = root / method
    stripped = root / "yarn-stripped"  # the yarn output with its scaling taken out of config.json
    shutil.copytree(made["yarn"], stripped)
    config = read_json(stripped / "config.json")
    config.pop("rope_scaling", None)
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": config.get("rope_theta", 10000.0)}
    (stripped / "config.json").write_text(json.dumps(config))
    made["stripped"] = stripped
    return made


def test_vllm_scores_and_generates_what_transformers_does(outputs):
    python = vllm.python()
    if python is None:
        if os.environ.get("ROPECONV_REQUIRE_VLLM"):
            pytest.fail("the vLLM environment is missing (ROPECONV_REQUIRE_VLLM is set); `make vllm` builds it")
        pytest.skip("no vLLM environment: `make vllm` builds .venv-vllm")
    import torch

    cpu = torch.device("cpu")
    sockets = temp_sockets()
    ref = rt.resolve(outputs["yarn"], "vllm")
    assert (ref.runtime, ref.runtime_name, ref.path) == ("vllm", "vLLM", outputs["yarn"])
    original = read_json(outputs["yarn"] / "config.json")["rope_scaling"]["original_max_position_embeddings"]
    with rt.open_runtime(ref, cpu) as served, \
            rt.open_runtime(rt.resolve(outputs["yarn"], "hf"), cpu) as hf, \
            rt.open_runtime(rt.resolve(outputs["stripped"], "hf"), cpu) as unscaled:
        text = "the quick brown fox jumps over the lazy dog and keeps on running " * 8
        ids = served.tokenize(text)[: 3 * original]
        assert len(ids) > 2 * original and ids == hf.tokenize(text)[: 3 * original]
        got, want = served.token_logprobs(ids), hf.token_logprobs(ids)
        gap = float(np.max(np.abs(got - want)))
        assert gap < vllm.MAX_ABS_LOGPROB, gap
        # the same comparison tells an output whose scaling vLLM would have dropped
        assert float(np.max(np.abs(got - unscaled.token_logprobs(ids))[original:])) > 100 * vllm.MAX_ABS_LOGPROB
        assert served.generate(ids, 12) == hf.generate(ids, 12)
        # a RULER trial past the original context: the same record (prompt, answers, greedy output, score)
        spec = ruler.TrialSpec("niah_single", 7 * original, 0)
        assert ruler.run_trial(served, spec, 0) == ruler.run_trial(hf, spec, 0)
        print(f"vLLM vs transformers, yarn ×8, {len(ids)} tokens: max |Δ log-prob| {gap:.2e}")
    assert temp_sockets() <= sockets, "vLLM's IPC sockets were left in the system temp folder"


@pytest.mark.parametrize("case, mentions", [
    ("dynamic", ("vLLM would not run this model", "dynamic")),
    ("no-env", ("vLLM not run", "--runtime vllm needs it")),
    ("gguf", ("no model for --runtime vllm",)),
])
def test_what_vllm_cannot_run_is_one_line(outputs, tmp_path, capsys, monkeypatch, case, mentions):
    model = outputs["dynamic" if case == "dynamic" else "yarn"]
    if case == "no-env":
        monkeypatch.setenv(vllm.ENV, "off")
    elif case == "dynamic" and vllm.python() is None:
        monkeypatch.setenv(vllm.ENV, "/bin/sh")  # any interpreter: the refusal comes before it would run
    if case == "gguf":
        gguf = tmp_path / "m.gguf"
        gguf.write_bytes(b"GGUF")
        model = gguf
    out = tmp_path / "eval"
    before = listing(tmp_path)
    rc = run_cli("eval", "passkey", model, "--runtime", "vllm", "--lengths", "200", "--trials", "1", "-o", out, "-q")
    assert_refused(capsys, rc, out, before, mentions=mentions)
