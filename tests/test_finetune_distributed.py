"""The accelerate loop across processes and interruptions: two CPU processes (gloo, `accelerate launch`) with the
same global batch and seed give one process's loss curve and adapter; a run killed after a checkpoint and
--resume'd ends with the uninterrupted run's adapter."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import add_byte_level_tokenizer, make_tiny, run_cli
from test_finetune_support import cli_json, one_thread  # noqa: F401 (an autouse fixture)

STEPS, BATCH = 12, 4
TOLERANCE = 1e-5


def _args(base: Path, text: Path, out: Path, *extra) -> list[str]:
    return [str(a) for a in ("finetune", "segments", base, "--method", "yarn", "--train-ctx", 32, "--target-ctx",
                             128, "--text", text, "--max-steps", STEPS, "--batch", BATCH, "--lr", 3e-3,
                             "--warmup-steps", 3, "--schedule", "linear", "--save-every", 2, "--seed", 11,
                             "--device", "cpu", "--json", "-o", out, *extra)]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter_model.safetensors")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    base = add_byte_level_tokenizer(make_tiny(root, "llama"))
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while rotary positions interpolate to longer windows".split()
    text = root / "corpus.txt"
    text.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + "."
                              for _ in range(200)) + "\n", encoding="utf-8")
    return root, base, text


@pytest.fixture(scope="module")
def reference(setup):
    """One process, the whole global batch in one forward: the curve and adapter the others must reproduce."""
    root, base, text = setup
    out = root / "one"
    result, _ = cli_json(*_args(base, text, out))
    assert result["processes"] == 1 and result["accumulation_steps"] == 1 and result["steps"] == STEPS
    assert not (root / "one.checkpoints").exists(), "checkpoints left after success"
    return out, result


def test_two_processes_match_one(setup, reference):
    """accelerate launch, 2 processes on gloo, each its half of the global batch in micro-batches of 1 (so 2
    accumulation steps): loss curve and adapter equal to the one-process run's within 1e-5."""
    root, base, text = setup
    ref_out, ref = reference
    out = root / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "ropeconv.cli.main", *_args(base, text, out, "--micro-batch", 1)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["processes"] == 2 and result["micro_batch"] == 1 and result["accumulation_steps"] == 2
    assert len(result["peak_rss_mib"]) == 2
    curve = max(abs(a - b) for a, b in zip(result["losses"], ref["losses"]))
    weights = _max_diff(_adapter(out), _adapter(ref_out))
    print(f"1 vs 2 processes: loss curve max |Δ| {curve:.2e} over {STEPS} steps, adapter max |Δ| {weights:.2e}")
    assert len(result["losses"]) == STEPS and curve < TOLERANCE
    assert weights < TOLERANCE
    assert len(set(ref["losses"])) > 1  # a real curve, not a constant


def test_resume_after_kill_matches_uninterrupted(setup, reference):
    """SIGKILL once a checkpoint is reported, then --resume: the final adapter and the loss curve are the
    uninterrupted run's."""
    root, base, text = setup
    ref_out, ref = reference
    out = root / "killed"
    cmd = [sys.executable, "-m", "ropeconv.cli.main", *_args(base, text, out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("checkpoint step 4:"):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed run published an adapter"
    assert list((root / "killed.checkpoints").glob("step-*")), "no checkpoint survived the kill"

    result, _ = cli_json(*_args(base, text, out, "--resume"))
    assert 4 <= result["resumed_from_step"] < STEPS
    assert len(result["losses"]) == STEPS
    curve = max(abs(a - b) for a, b in zip(result["losses"], ref["losses"]))
    weights = _max_diff(_adapter(out), _adapter(ref_out))
    print(f"resumed at step {result['resumed_from_step']}: curve max |Δ| {curve:.2e}, adapter max |Δ| {weights:.2e}")
    assert curve < TOLERANCE and weights < TOLERANCE
    assert not (root / "killed.checkpoints").exists()


def test_accumulation_and_gradient_checkpointing_keep_the_curve(setup, reference, tmp_path):
    """One process, micro-batches of 1 (4 accumulation steps) with gradient checkpointing: the same curve and
    adapter as the whole batch in one forward; progress reports loss and tokens/s."""
    root, base, text = setup
    ref_out, ref = reference
    result, stderr = cli_json(*_args(base, text, tmp_path / "acc", "--micro-batch", 1, "--gradient-checkpointing"))
    assert result["accumulation_steps"] == 4
    assert max(abs(a - b) for a, b in zip(result["losses"], ref["losses"])) < TOLERANCE
    assert _max_diff(_adapter(tmp_path / "acc"), _adapter(ref_out)) < TOLERANCE
    assert f"step {STEPS}/{STEPS}: loss" in stderr and "tokens/s" in stderr


def test_fresh_run_refuses_old_checkpoints_and_resume_needs_one(setup, tmp_path, capsys):
    root, base, text = setup
    out = tmp_path / "x"
    capsys.readouterr()
    assert run_cli(*_args(base, text, out, "--resume")) == 2
    assert "--resume: no complete checkpoint" in capsys.readouterr().err
    step = tmp_path / "x.checkpoints" / "step-000002"
    step.mkdir(parents=True)
    (step / "losses.json").write_text("[1.0, 1.0]\n")
    assert run_cli(*_args(base, text, out)) == 2
    assert "--resume to continue" in capsys.readouterr().err
    from ropeconv.finetune.train import RUN_RECORD

    (tmp_path / "x.checkpoints" / RUN_RECORD).write_text(json.dumps({"lr": 1.0, "seed": 11}))
    assert run_cli(*_args(base, text, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "→" in err
    assert not out.exists()


def test_batch_must_split_over_processes(setup, tmp_path, capsys):
    """--micro-batch must divide the process's share; --max-tokens caps the steps."""
    root, base, text = setup
    capsys.readouterr()
    assert run_cli(*_args(base, text, tmp_path / "y", "--micro-batch", 3)) == 2
    assert "--micro-batch 3" in capsys.readouterr().err
    assert run_cli(*_args(base, text, tmp_path / "y", "--precision", "bf16")) == 2
    assert "needs a GPU" in capsys.readouterr().err
    result, _ = cli_json(*_args(base, text, tmp_path / "z", "--max-tokens", 2 * BATCH * 32 + 5, "--micro-batch", 2))
    assert result["steps"] == 2 and result["accumulation_steps"] == 2
    assert torch.isfinite(torch.tensor(result["losses"])).all()
