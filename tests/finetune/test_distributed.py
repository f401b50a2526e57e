"""The accelerate loop across processes and interruptions: two CPU processes (gloo, `accelerate launch`) with the
same global batch and seed give one process's loss curve and adapter; a run killed after a checkpoint and
--resume'd ends with the uninterrupted run's adapter."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import add_byte_level_tokenizer, make_tiny, run_cli
from tests.finetune.support import cli_json, one_thread  # noqa: F401 (an autouse fixture)

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


def _kill_after_checkpoint(args: list[str], out: Path, step: int) -> Path:
    """Run `ropeconv ARGS` in a child process and SIGKILL it once the checkpoint of `step` is reported; returns
    the checkpoint folder it leaves."""
    cmd = [sys.executable, "-m", "ropeconv.cli.main", *args]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith(f"checkpoint step {step}:"):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed run published an adapter"
    checkpoints = out.with_name(out.name + ".checkpoints")
    assert list(checkpoints.glob("step-*")), "no checkpoint survived the kill"
    return checkpoints


def test_resume_after_kill_matches_uninterrupted(setup, reference):
    """SIGKILL once a checkpoint is reported, then --resume: the final adapter and the loss curve are the
    uninterrupted run's."""
    root, base, text = setup
    ref_out, ref = reference
    out = root / "killed"
    _kill_after_checkpoint(_args(base, text, out), out, 4)

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
    from ropeconv.finetune.train import RUN_RECORD

    step = tmp_path / "x.checkpoints" / "step-000002"
    step.mkdir(parents=True)
    (step / "losses.json").write_text("[1.0, 1.0]\n")
    (tmp_path / "x.checkpoints" / RUN_RECORD).write_text("{}\n")  # without it the folder is not a fine-tune's
    assert run_cli(*_args(base, text, out)) == 2
    assert "--resume to continue" in capsys.readouterr().err
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


@pytest.fixture(scope="module")
def killed_at_3(setup):
    """A one-process run (the whole batch in one forward: 1 accumulation step) killed after its step-3 checkpoint
    (--save-every 3): a pristine copy of the checkpoint folder it leaves, and its --save-every."""
    root, base, text = setup
    out = root / "killed3"
    checkpoints = _kill_after_checkpoint(_args(base, text, out, "--save-every", 3), out, 3)
    pristine = root / "killed3.pristine"
    shutil.copytree(checkpoints, pristine)
    return checkpoints, pristine


def test_resume_with_another_micro_batch_matches_uninterrupted(setup, reference, killed_at_3, monkeypatch):
    """Killed after step 3 with 1 accumulation step, resumed with --micro-batch 1 (4 accumulation steps): accelerate's
    restored micro-batch counter (3) must not shift where the accumulation syncs, so the adapter is the
    uninterrupted run's. The checkpoint holds nothing that load_state unpickles with weights_only=False, and every
    torch.load of the resume is weights_only=True."""
    root, base, text = setup
    ref_out, ref = reference
    checkpoints, _ = killed_at_3
    names = {p.name for p in checkpoints.rglob("*")}
    assert not any(n.startswith("custom_checkpoint_") for n in names), names  # the schedule is rebuilt, not pickled
    loads: list = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    out = root / "killed3"
    result, _ = cli_json(*_args(base, text, out, "--save-every", 3, "--micro-batch", 1, "--resume"))
    monkeypatch.undo()
    assert result["resumed_from_step"] == 3 and result["accumulation_steps"] == 4
    assert loads and all(w is True for w in loads), loads  # the optimizer and the RNG record, both weights_only
    curve = max(abs(a - b) for a, b in zip(result["losses"], ref["losses"]))
    weights = _max_diff(_adapter(out), _adapter(ref_out))
    print(f"resumed at step 3 with 4 accumulation steps: curve max |Δ| {curve:.2e}, adapter max |Δ| {weights:.2e}")
    assert len(result["losses"]) == STEPS and curve < TOLERANCE and weights < TOLERANCE


def _resume_copy(setup, killed_at_3, where: Path, capsys) -> str:
    """--resume from a copy of the killed run's checkpoints at WHERE.checkpoints (altered by the caller): exit 2,
    one stderr line, returned."""
    root, base, text = setup
    capsys.readouterr()
    rc = run_cli(*_args(base, text, where, "--save-every", 3, "--resume", "-q"))
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not where.exists()
    return lines[0]


@pytest.mark.parametrize("damage", ["losses-truncated", "losses-short", "adapter-truncated", "optimizer-truncated"])
def test_resume_from_a_damaged_checkpoint_says_so(setup, killed_at_3, tmp_path, capsys, damage):
    _, pristine = killed_at_3
    where = tmp_path / "x"
    checkpoints = tmp_path / "x.checkpoints"
    shutil.copytree(pristine, checkpoints)
    step = checkpoints / "step-000003"
    if damage == "losses-truncated":
        path = step / "losses.json"
        path.write_bytes(path.read_bytes()[:7])
    elif damage == "losses-short":
        path = step / "losses.json"
        path.write_text(json.dumps(json.loads(path.read_text())[:2]) + "\n")
    else:
        path = step / ("adapter_state.safetensors" if damage == "adapter-truncated" else "optimizer.bin")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    line = _resume_copy(setup, killed_at_3, where, capsys)
    assert f"--resume: checkpoint {step} unreadable (" in line and "start over with --force" in line, line


def test_resume_in_another_precision_is_refused(setup, killed_at_3, tmp_path, capsys):
    """run.json records the device and precision as resolved (cpu, fp32 = "no"): a run recorded in bf16 on a GPU
    is not continued here."""
    _, pristine = killed_at_3
    checkpoints = tmp_path / "x.checkpoints"
    shutil.copytree(pristine, checkpoints)
    from ropeconv.finetune.train import RUN_RECORD

    record = json.loads((checkpoints / RUN_RECORD).read_text())
    assert record["precision"] == "no" and record["device"] == "cpu"
    record.update(precision="bf16", device="cuda")
    (checkpoints / RUN_RECORD).write_text(json.dumps(record))
    line = _resume_copy(setup, killed_at_3, tmp_path / "x", capsys)
    assert "other settings" in line and "precision 'bf16' → 'no'" in line, line


def test_deepspeed_is_refused_before_any_work(setup, tmp_path, capsys, monkeypatch):
    """A DeepSpeed accelerate config (accelerate launch sets ACCELERATE_USE_DEEPSPEED) is refused in one line, exit 2,
    before a model loads or a checkpoint folder is made; the check itself is a function of the distributed type."""
    from ropeconv.errors import InputError
    from ropeconv.finetune.loop import refuse_deepspeed

    with pytest.raises(InputError, match="DeepSpeed is not supported"):
        refuse_deepspeed("DEEPSPEED")
    for other in ("NO", "MULTI_CPU", "MULTI_GPU", "FSDP"):
        refuse_deepspeed(other)
    root, base, text = setup
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    capsys.readouterr()
    rc = run_cli(*_args(base, text, tmp_path / "ds"))
    err = capsys.readouterr().err
    assert rc == 2 and "DeepSpeed is not supported" in err and "FSDP" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.checkpoints").exists()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(setup, tmp_path, monkeypatch):
    """accelerate's prepare (or the first steps) failing must not leave a checkpoint folder holding run.json alone,
    which would refuse the retry ("--resume to continue" / "no complete checkpoint")."""
    from ropeconv.finetune import loop

    def failing_train(accelerator, model, *rest):
        accelerator.prepare(model)
        raise RuntimeError("prepare failed")

    monkeypatch.setattr(loop, "train", failing_train)
    root, base, text = setup
    with pytest.raises(RuntimeError, match="prepare failed"):
        run_cli(*_args(base, text, tmp_path / "f"))
    assert not (tmp_path / "f.checkpoints").exists(), list((tmp_path / "f.checkpoints").iterdir())
    assert not (tmp_path / "f").exists()
