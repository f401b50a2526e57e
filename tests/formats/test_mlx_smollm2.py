"""The real SmolLM2-135M (make demo's work/smollm2-135m) extended with YaRN ×4 and written --to mlx, proven in
mlx-lm against transformers at positions up to 9,215 (original context 8192): ropeconv's 2,048-token probe placed at
positions 7168–9215 (mlx-lm's rope shifted by 7168, as parity places every runtime's probe), prefilled through both
KV caches, its last 8 tokens decoded one at a time; every next token is the same greedy token (top-1 100 %) and the
log-probabilities agree within LOGPROB_TOLERANCE (bounded by twice the report's max |Δlogit|). A full 9,216-token prompt from position 0 was tried
and stopped after 18 minutes on the shared 2-core CPU (mlx's CPU backend on Linux multiplied at ~2 GFLOP/s here, torch at ~60)."""

from __future__ import annotations

import pytest

from tests.conftest import read_json
from tests.test_smollm2 import extend_yarn_x4_proven, smol  # noqa: F401  (the SmolLM2 fixture)

pytest.importorskip("mlx_lm")

TOKENS = 2048  # positions 7168–9215: 1024 past the original 8192
LOGPROB_TOLERANCE = 5e-3  # measured: 2 × 1.67e-3 (max |Δlogit| 1.67e-3 at positions 7168–9215)


@pytest.mark.slow
def test_mlx_yarn_x4_up_to_position_9215_matches_transformers(smol, tmp_path, capsys):
    out = tmp_path / "smol-yarn-mlx"
    report, _ = extend_yarn_x4_proven(smol, out, "mlx", "mlx-lm", TOKENS, capsys)
    assert read_json(out / "mlx" / "config.json")["rope_scaling"]["type"] == "yarn"

    # log-probabilities: log_softmax moves each row by at most max|Δlogit|, so every log-probability differs by at
    # most twice it
    assert 2 * report["max_abs_logit"] <= LOGPROB_TOLERANCE, report["max_abs_logit"]
