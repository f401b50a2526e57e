"""The real SmolLM2-135M (make demo's work/smollm2-135m) extended with YaRN ×4 and written --to openvino, proven in
OpenVINO (optimum-intel's OVModelForCausalLM, f32) against transformers on a probe of 9,216 tokens that ends past the
original context (8192): prefilled through both KV caches, its last 8 tokens decoded one at a time; every next token
is the same greedy token and the log-probabilities agree within LOGPROB_TOLERANCE (bounded by twice the report's max
|Δlogit|). Marked long: the export of a 135M model and a 9k-token reference are minutes on 2 cores."""

from __future__ import annotations

import os

import pytest

from ropeconv.openvino_export import env
from tests.conftest import read_json
from tests.test_smollm2 import WORK, extend_yarn_x4_proven

TOKENS = 9216  # up to position 9215: 1024 past the original 8192
LOGPROB_TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def smol():
    if env.python() is None:
        if os.environ.get("ROPECONV_REQUIRE_OPENVINO"):
            pytest.fail("the OpenVINO environment is missing (ROPECONV_REQUIRE_OPENVINO is set); `make openvino`")
        pytest.skip("no OpenVINO environment (make openvino, or ROPECONV_OPENVINO_PYTHON)")
    from ropeconv.fixtures import smollm2

    return smollm2.materialize_hf(WORK / "smollm2-135m")


@pytest.mark.slow
@pytest.mark.long
def test_openvino_yarn_x4_past_the_original_context_matches_transformers(smol, tmp_path, capsys):
    out = tmp_path / "smol-yarn-openvino"
    report, _ = extend_yarn_x4_proven(smol, out, "openvino", "openvino", TOKENS, capsys)
    assert read_json(out / "openvino" / "ropeconv-openvino.json")["rope_parameters"]["rope_type"] == "yarn"
    assert 2 * report["max_abs_logit"] <= LOGPROB_TOLERANCE, report["max_abs_logit"]
