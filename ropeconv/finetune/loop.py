"""The training loop PoSE and segments share, on accelerate: one process, or many under `accelerate launch` /
`torchrun` (data parallel; FSDP from accelerate's own config file; DeepSpeed is refused, see `refuse_deepspeed`).

accelerate owns the distributed parts: the process group, the wrapping (DDP/FSDP), mixed precision, gradient
accumulation (`accumulate` + `backward`), the gradient all-reduce, and the checkpoints (`save_state`/`load_state`).
What ropeconv adds:
  - the global batch of a step is drawn from (seed, step) alone (ropeconv.finetune.batches); process r takes its
    slice, in micro-batches of `micro_batch` samples; so the loss is the mean over the global batch whatever the
    number of processes, and a resumed run draws what an uninterrupted one draws;
  - checkpoints hold the adapter's weights only (a save-state hook), the optimizer and accelerate's RNG record;
    each is written to `step-NNNNNN.partial` and renamed to `step-NNNNNN` once every process is done, so a kill
    leaves the last complete checkpoint, which `--resume` continues from. The learning-rate schedule is not saved:
    it is a function of the step, rebuilt at the resumed step (accelerate would pickle a registered scheduler and
    load it with weights_only=False). Everything load_state reads here goes through torch.load(weights_only=True)
    or safetensors (under FSDP, torch.distributed.checkpoint also reads its `.metadata` with pickle);
  - checkpoints are taken on step boundaries only, so a resume restarts accelerate's micro-batch counter at 0: the
    accumulation then syncs at this run's micro-batches even when --micro-batch or the process count changed.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv.errors import InputError
from ropeconv.finetune.batches import Sample, process_slice
from ropeconv.progress import Progress

SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}  # transformers' names
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKPOINT_PREFIX = "step-"
ADAPTER_STATE = "adapter_state.safetensors"
LOSSES = "losses.json"


@dataclass(frozen=True)
class LoopSpec:
    steps: int
    global_batch: int  # samples per optimizer step, over all processes
    micro_batch: int  # samples per forward on one process; 0: the process's whole share
    lr: float
    warmup_steps: int
    schedule: str  # a key of SCHEDULES
    seed: int
    train_ctx: int
    checkpoint_dir: Path | None = None
    save_every_steps: int = 0  # 0: never
    resume: bool = False
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class LoopResult:
    losses: tuple[float, ...]  # mean over each step's global batch
    seconds: float
    tokens_per_s: float  # trained tokens (global batch × train_ctx) per second of this run's steps
    processes: int
    distributed: str  # accelerate's DistributedType: NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED
    micro_batch: int
    accumulation_steps: int
    resumed_from_step: int
    peak_rss_mib: tuple[float, ...]  # per process
    peak_gpu_mib: tuple[float, ...]  # per process, where CUDA ran


def make_accelerator(device: str, precision: str, global_batch: int, micro_batch: int):
    """The Accelerator for this process group, with gradient accumulation sized so that
    processes × micro_batch × accumulation = global_batch (refused when it does not divide)."""
    from accelerate import Accelerator, PartialState

    refuse_deepspeed("DEEPSPEED" if _env_true("ACCELERATE_USE_DEEPSPEED") else "NO")  # before accelerate imports it
    kind, mixed = resolve_run(device, precision)
    cpu = kind == "cpu"
    if cpu and _env_true("ACCELERATE_USE_FSDP"):
        raise InputError("FSDP runs on GPUs only (accelerate shards over CUDA/XPU/… devices, never the CPU's gloo "
                         "group); on the CPU launch without the FSDP config for data parallel")
    state = PartialState(cpu=cpu)
    try:
        accumulation = accumulation_steps(global_batch, micro_batch, state.num_processes)
        accelerator = Accelerator(cpu=cpu, mixed_precision=mixed, gradient_accumulation_steps=accumulation,
                                  step_scheduler_with_optimizer=False)
        refuse_deepspeed(accelerator.distributed_type.value)
    except InputError:
        if state.num_processes == 1:
            release_state()
        raise
    return accelerator


DEEPSPEED_REFUSED = (
    "DeepSpeed is not supported by ropeconv finetune (it needs a DataLoader in prepare, its config's gradient "
    "accumulation overrides --batch/--micro-batch, and ZeRO-3 cannot gather the adapter); shard with FSDP instead: "
    "accelerate launch --config_file ropeconv/finetune/configs/fsdp.yaml …")


def refuse_deepspeed(distributed_type: str) -> None:
    """DeepSpeed through accelerate is refused before any work: prepare(model, optimizer) without a DataLoader
    raises under its "auto" micro-batch, its gradient_accumulation_steps overrides ropeconv's, and ZeRO-3's
    get_state_dict raises. FSDP is the supported sharding."""
    if str(distributed_type).upper() == "DEEPSPEED":
        raise InputError(DEEPSPEED_REFUSED)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"  # as accelerate reads its ACCELERATE_USE_* flags


def end_process_group(accelerator) -> None:
    """Destroy the process group this run joined (accelerate's end_training), when one was initialized."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        accelerator.end_training()


def accumulation_steps(global_batch: int, micro_batch: int, world: int) -> int:
    if global_batch % world:
        raise InputError(f"--batch {global_batch} (the global batch) must be a multiple of the {world} processes")
    share = global_batch // world
    micro = micro_batch or share
    if share % micro:
        raise InputError(f"--micro-batch {micro} must divide each process's share of the global batch, {share} "
                         f"(--batch {global_batch} over {world} processes)")
    return share // micro


def resolve_run(device: str, precision: str) -> tuple[str, str]:
    """(the device type, accelerate's mixed_precision) this process would train with: what a resume must repeat."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to this process")
    cuda = device != "cpu" and torch.cuda.is_available()
    return ("cuda" if cuda else "cpu"), resolve_precision(precision, cuda=cuda)


def resolve_precision(precision: str, *, cuda: bool) -> str:
    """accelerate's mixed_precision: bf16 where the GPU has it, else fp16 on a GPU; fp32 ("no") on the CPU."""
    import torch

    if not cuda:
        if precision in ("bf16", "fp16"):
            raise InputError(f"--precision {precision} needs a GPU; on the CPU ropeconv trains in fp32")
        return "no"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": "no"}.get(precision, precision)


def release_state() -> None:
    """Forget accelerate's process-wide state after a one-process run, so a later run in the same Python process
    (a library caller, the tests) may choose another device or precision."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def train(accelerator, model, spec: LoopSpec, draw: Callable[[int], Sequence[Sample]], progress: Progress,
          loss_fn: Callable) -> tuple[Any, LoopResult]:
    """Train `model` (its trainable parameters) for spec.steps; returns the prepared model and the result."""
    import torch
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    schedule = get_scheduler(SCHEDULES[spec.schedule], optimizer, num_warmup_steps=spec.warmup_steps,
                             num_training_steps=spec.steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # the schedule is stepped by hand, once per optimizer step, and never registered for checkpointing (accelerate
    # would pickle it and load it with weights_only=False): a resume rebuilds it at the resumed step instead
    _register_adapter_hooks(accelerator)

    world, rank = accelerator.num_processes, accelerator.process_index
    micro = spec.global_batch // world // accelerator.gradient_accumulation_steps
    losses: list[float] = []
    first = 1
    if spec.resume:
        first, losses = resume(accelerator, spec.checkpoint_dir)
        advance_schedule(schedule, first - 1)
        progress.note(f"resumed from step {first - 1} ({spec.checkpoint_dir})")
    model.train()
    every = max(1, spec.steps // 10)
    tokens_per_step = spec.global_batch * spec.train_ctx
    start = time.monotonic()
    for step in range(first, spec.steps + 1):
        mine = process_slice(draw(step), rank, world)
        total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        for i in range(0, len(mine), micro):
            rows = mine[i:i + micro]
            input_ids = torch.tensor([s.input_ids for s in rows], dtype=torch.long, device=accelerator.device)
            position_ids = torch.tensor([s.position_ids for s in rows], dtype=torch.long, device=accelerator.device)
            with accelerator.accumulate(model):
                loss = loss_fn(model, input_ids, position_ids)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            total += loss.detach().to(torch.float64)
        value = float(accelerator.reduce(total / accelerator.gradient_accumulation_steps, reduction="mean"))
        if not math.isfinite(value):
            raise InputError(f"the loss became {value} at step {step}; lower --lr")
        schedule.step()
        losses.append(value)
        if step == first or step % every == 0 or step == spec.steps:
            seconds = time.monotonic() - start
            rate = tokens_per_step * (step - first + 1) / max(seconds, 1e-9)
            progress.note(f"step {step}/{spec.steps}: loss {value:.4f}, lr {schedule.get_last_lr()[0]:.2e}, "
                          f"{rate:.0f} tokens/s over {world} process{'es' * (world > 1)} ({seconds:.1f} s)")
        if spec.save_every_steps and spec.checkpoint_dir and (step % spec.save_every_steps == 0) and step < spec.steps:
            where = save_checkpoint(accelerator, spec.checkpoint_dir, step, losses)
            progress.note(f"checkpoint step {step}: {where}")
    seconds = time.monotonic() - start
    done = spec.steps - first + 1
    return model, LoopResult(
        losses=tuple(losses), seconds=seconds, tokens_per_s=tokens_per_step * done / max(seconds, 1e-9),
        processes=world, distributed=accelerator.distributed_type.value, micro_batch=micro,
        accumulation_steps=accelerator.gradient_accumulation_steps,
        resumed_from_step=first - 1, peak_rss_mib=_per_process(accelerator, _peak_rss_mib()),
        peak_gpu_mib=_per_process(accelerator, _peak_gpu_mib()) if accelerator.device.type == "cuda" else ())


# ----------------------------------------------------------------------------- checkpoints


def _register_adapter_hooks(accelerator) -> None:
    """Checkpoints carry the trainable (adapter) weights, not the frozen base: saved and loaded by peft's own
    state-dict functions. Under FSDP/DeepSpeed accelerate saves its sharded model state itself (no weights here)."""

    def save(models, weights, output_dir):
        if weights and accelerator.is_main_process:
            from peft import get_peft_model_state_dict
            from safetensors.torch import save_file

            state = get_peft_model_state_dict(accelerator.unwrap_model(models[0]))
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, Path(output_dir) / ADAPTER_STATE)
        weights.clear()

    def load(models, input_dir):
        path = Path(input_dir) / ADAPTER_STATE
        if models and path.is_file():
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(accelerator.unwrap_model(models[0]), load_file(path))
            models.clear()

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def advance_schedule(schedule, steps: int) -> None:
    """The schedule as it stands after `steps` optimizer steps (it is a function of the step alone)."""
    import warnings

    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            schedule.step()


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def latest_checkpoint(directory: Path) -> tuple[int, Path] | None:
    """The complete checkpoint with the highest step (a `.partial` one was being written when the run died)."""
    found = []
    for path in Path(directory).glob(f"{CHECKPOINT_PREFIX}*"):
        digits = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and digits.isdigit() and (path / LOSSES).is_file():
            found.append((int(digits), path))
    return max(found) if found else None


def save_checkpoint(accelerator, directory: Path, step: int, losses: Sequence[float]) -> Path:
    final = Path(directory) / checkpoint_name(step)
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / LOSSES).write_text(json.dumps(list(losses)) + "\n", encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for older in Path(directory).glob(f"{CHECKPOINT_PREFIX}*"):  # keep the newest complete one only
            if older != final:
                shutil.rmtree(older, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume(accelerator, directory: Path | None) -> tuple[int, list[float]]:
    """(the next step, the losses so far) after loading the latest checkpoint into the prepared objects."""
    latest = latest_checkpoint(directory) if directory else None
    if latest is None:
        raise InputError(f"--resume: no complete checkpoint in {directory}")
    step, path = latest
    try:
        losses = json.loads((path / LOSSES).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, or bytes that are not UTF-8
        raise _unreadable(path, f"{LOSSES}: {_reason(exc)}") from None
    if not (isinstance(losses, list) and len(losses) == step
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in losses)):
        raise _unreadable(path, f"{LOSSES} does not hold the {step} finite losses of steps 1–{step}")
    try:
        accelerator.load_state(str(path))
    except Exception as exc:  # torch, safetensors and accelerate raise many kinds for a truncated or foreign file
        raise _unreadable(path, _reason(exc)) from None
    # checkpoints are taken on step boundaries: accelerate's restored micro-batch counter counts micro-batches of the
    # run that saved it (its --micro-batch and process count), so it restarts at 0 for this run's accumulation
    accelerator.step = 0
    return step + 1, [float(x) for x in losses]


def _unreadable(path: Path, why: str) -> InputError:
    return InputError(f"--resume: checkpoint {path} unreadable ({why}); start over with --force")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = (text[:160] + "…") if len(text) > 160 else text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------- figures


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _peak_gpu_mib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def _per_process(accelerator, value: float) -> tuple[float, ...]:
    import torch

    gathered = accelerator.gather(torch.tensor([value], dtype=torch.float64, device=accelerator.device))
    return tuple(round(float(v), 1) for v in gathered.cpu())
