"""A LoRA fine-tune for an extended context (PoSE or segments): validate everything, train on the shared accelerate
loop (ropeconv.finetune.loop), then publish a PEFT adapter directory atomically (main process only).

The rope scaling is applied exactly as the reference computes it: every *RotaryEmbedding module is
replaced by ropeconv.parity.reference's PlanRotaryEmbedding, which evaluates the same RopePlan that
`ropeconv extend BASE --method M --target-ctx N` builds (cos/sin from the plan's divisors and attention
factor at the running maximum position; no gradient flows through it). An absolute-position base (GPT-2, OPT)
trained under `--method absolute` gets the plan's resampled position table (frozen), as `extend` writes it.
LoRA comes from peft (an optional dependency, imported lazily); only the adapter weights train. Dropout is off
(every *dropout / *pdrop config value set to 0) so that a run is a function of its seed, whatever the number of
processes.

Data: the text is tokenized whole with the base's tokenizer (no special tokens), then cut into documents, each
led by the tokenizer's BOS when it has one; a tail too short to sample from joins the previous document. PoSE
documents are 5·train_ctx tokens (the official code truncates each document to 5·Lc); segments documents are
target_ctx tokens (the long inputs segments are drawn from). Each step's global batch is drawn from (seed, step)
by ropeconv.finetune.batches with the sampling rule (pose.pose_sample or segments.segments_sample). Labels are
the input ids (as in the official code); an all-ones attention mask is passed so transformers does not read a
position jump as the start of a packed second sequence (it would then block attention across the chunks).

The output holds what peft's save_pretrained writes (adapter_config.json, adapter_model.safetensors and its
README.md) plus ropeconv_rope.json, the rope scaling the adapter was trained under (see `rope_record`).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ropeconv import methods
from ropeconv.errors import InputError
from ropeconv.eval.text import MIN_TEXT_BYTES, TEXT_BYTES_PER_TOKEN, read_text
from ropeconv.export.staging import _umask, check_target, overlap_refusal, staged_dir, target_lock
from ropeconv.finetune import loop
from ropeconv.finetune.batches import global_batch
from ropeconv.finetune.pose import pose_sample
from ropeconv.finetune.segments import DEFAULT_SEGMENTS, check_segments, segments_sample
from ropeconv.manifest import write_manifest
from ropeconv.methods.base import ExtendRequest
from ropeconv.progress import Progress

ROPE_RECORD = "ropeconv_rope.json"
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
# when --target-modules is not given: the first set the base has every module of (its attention projections)
ATTENTION_MODULES = (DEFAULT_TARGET_MODULES, ("q_proj", "k_proj", "v_proj", "out_proj"), ("qkv_proj", "o_proj"),
                     ("query_key_value", "dense"), ("c_attn", "c_proj"), ("Wqkv", "out_proj"))
MIN_TRAIN_CTX = 8
MAX_TEXT_BYTES = 1 << 30  # --text is tokenized in memory (~11 bytes a byte of text): 1 GiB of it is ~11 GiB
DOC_WINDOWS = 5  # PoSE documents are cut to this many training windows (official: max_length = 5·Lc)
SAMPLINGS = ("pose", "segments")
RUN_RECORD = "run.json"  # in the checkpoint folder: the settings a --resume must repeat
CHECKPOINTS_SUFFIX = ".checkpoints"  # --checkpoint-dir default: OUT's sibling OUT.checkpoints
PEFT_MISSING = "ropeconv finetune needs peft: pip install 'ropeconv[finetune]'"


@dataclass(frozen=True)
class FinetuneJob:
    base: Path
    text: Path
    out: Path
    train_ctx: int
    target_ctx: int
    sampling: str = "pose"  # one of SAMPLINGS
    n_segments: int = DEFAULT_SEGMENTS  # segments only
    method: str = "yarn"
    options: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 100  # --max-steps
    max_tokens: int = 0  # 0: no token budget; else steps = min(steps, max_tokens // (batch · train_ctx))
    lr: float = 1e-4
    warmup_steps: int = 0
    schedule: str = "constant"
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ()  # (): the base's attention projections (ATTENTION_MODULES)
    batch: int = 1  # global batch: samples per optimizer step over all processes
    micro_batch: int = 0  # samples per forward per process; 0: the process's whole share
    precision: str = "auto"
    gradient_checkpointing: bool = False
    checkpoint_dir: Path | None = None  # None: OUT.checkpoints
    save_every: int = 0  # steps between checkpoints; 0: max(1, steps // 10)
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    force: bool = False
    rebase: bool = False

    @property
    def checkpoints(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(self.out).with_name(
            Path(self.out).name + CHECKPOINTS_SUFFIX)

    @property
    def n_steps(self) -> int:
        if not self.max_tokens:
            return self.steps
        return min(self.steps, self.max_tokens // (self.batch * self.train_ctx))


@dataclass(frozen=True)
class Prepared:
    job: FinetuneJob
    base: Path  # absolute
    plan: Any  # RopePlan or AbsolutePlan
    target_modules: tuple[str, ...]
    documents: list[list[int]]
    n_tokens: int


@dataclass(frozen=True)
class FinetuneResult:
    out: Path
    published: bool  # False on every process but the main one, which wrote the adapter
    rope: dict[str, Any]
    trained: loop.LoopResult
    device: str
    n_tokens: int
    n_documents: int
    files: list[str]

    @property
    def losses(self) -> list[float]:
        return list(self.trained.losses)

    def to_json(self) -> dict[str, Any]:
        t = self.trained
        return {"out": str(self.out), "rope": self.rope, "steps": len(t.losses), "losses": list(t.losses),
                "loss_first": t.losses[0], "loss_last": t.losses[-1], "seconds": round(t.seconds, 3),
                "tokens_per_s": round(t.tokens_per_s, 1), "processes": t.processes, "distributed": t.distributed,
                "micro_batch": t.micro_batch,
                "accumulation_steps": t.accumulation_steps, "resumed_from_step": t.resumed_from_step,
                "peak_rss_mib": list(t.peak_rss_mib), "peak_gpu_mib": list(t.peak_gpu_mib),
                "device": self.device, "tokens": self.n_tokens, "documents": self.n_documents, "files": self.files}


def require_peft():
    try:
        import peft
    except ImportError:
        raise InputError(PEFT_MISSING) from None
    return peft


def rope_record(prepared: Prepared) -> dict[str, Any]:
    """ropeconv_rope.json: the plan's own values, as `extend --method M --target-ctx N` computes them."""
    plan = prepared.plan.to_json()
    job = prepared.job
    record = {
        "method": plan["method"],
        "original_ctx": plan["original_ctx"],
        "target_ctx": plan["target_ctx"],
        "factor": plan["factor"],
        "params": json.loads(json.dumps(plan["params"], default=str)),
        "train_ctx": job.train_ctx,
        "base": str(prepared.base),
    }
    if job.sampling != "pose":  # PoSE adapters keep the record they always had
        record["sampling"] = job.sampling
        record["segments"] = job.n_segments
    return record


# ----------------------------------------------------------------------------- validation (writes nothing)


def prepare(job: FinetuneJob) -> Prepared:
    _check_numbers(job)
    require_peft()
    check_target(Path(job.out), job.force)
    inputs = [("base", Path(job.base)), ("--text", Path(job.text))]
    for written in (Path(job.out), job.checkpoints):  # neither may be, or lie inside, what the run reads
        refusal = overlap_refusal(written, inputs)
        if refusal:
            raise InputError(refusal)
    _check_checkpoints(job)
    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.checkpoint.rope_config import describe_scaling

    ckpt = load_checkpoint(job.base)
    method = methods.get(job.method)
    methods.check_applies(method, ckpt.scheme, ckpt.arch.model_type)
    if method.NAME == "none":
        raise InputError("--method none is no extension; choose a scaling method to train under")
    if ckpt.scheme.kind == "alibi":
        raise InputError(f"{ckpt.arch.model_type} uses ALiBi, which takes no position ids: {job.sampling} "
                         "training moves positions, so it cannot train an ALiBi model")
    existing = getattr(ckpt.scheme, "existing_scaling", None)
    if existing and not job.rebase:
        raise InputError(
            f"{job.base} already carries rope scaling ({describe_scaling(existing)}, original context "
            f"{ckpt.scheme.original_ctx}); pass --rebase to train under the new method from the unscaled positions"
        )
    plan = method.plan(ckpt.scheme, ExtendRequest(target_ctx=job.target_ctx, options=dict(job.options)))
    targets = job.target_modules or _default_target_modules(ckpt.tensors)
    _check_target_modules(targets, ckpt.tensors)
    text = _read_text(job)
    ids, bos = _tokenize(ckpt.path, text, int(ckpt.config.get("vocab_size") or 0))
    need = job.train_ctx if job.sampling == "pose" else job.target_ctx
    length = DOC_WINDOWS * job.train_ctx if job.sampling == "pose" else job.target_ctx
    documents = cut_documents(ids, length, need, bos)
    n_tokens = sum(len(d) for d in documents)
    if not documents:
        flag = "--train-ctx" if job.sampling == "pose" else "--target-ctx"
        raise InputError(f"--text {job.text}: {len(ids) + (bos is not None)} tokens with the base's tokenizer; "
                         f"{flag} {need} needs at least {need}")
    return Prepared(job=job, base=Path(ckpt.path).resolve(), plan=plan, target_modules=tuple(targets),
                    documents=documents, n_tokens=n_tokens)


def _check_numbers(job: FinetuneJob) -> None:
    n, big = job.train_ctx, job.target_ctx
    if job.sampling not in SAMPLINGS:
        raise InputError(f"sampling {job.sampling!r}: expected one of {', '.join(SAMPLINGS)}")
    if n < MIN_TRAIN_CTX:
        raise InputError(f"--train-ctx must be at least {MIN_TRAIN_CTX}, got {n}")
    if n >= big:
        raise InputError(f"--train-ctx {n} must be smaller than --target-ctx {big} ({job.sampling} trains a short "
                         "window for a longer target)")
    if job.sampling == "segments":
        problem = check_segments(n, big, job.n_segments)
        if problem:
            raise InputError(f"--segments: {problem}")
    for flag, value in (("--max-steps", job.steps), ("--rank", job.rank), ("--batch", job.batch)):
        if value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    for flag, value in (("--max-tokens", job.max_tokens), ("--micro-batch", job.micro_batch),
                        ("--warmup-steps", job.warmup_steps), ("--save-every", job.save_every)):
        if value < 0:
            raise InputError(f"{flag} must not be negative, got {value}")
    if job.max_tokens and job.n_steps < 1:
        raise InputError(f"--max-tokens {job.max_tokens} is less than one step's {job.batch * n} tokens "
                         f"(--batch {job.batch} × --train-ctx {n})")
    if not (math.isfinite(job.lr) and job.lr > 0):
        raise InputError(f"--lr must be a positive number, got {job.lr}")
    if not (math.isfinite(job.alpha) and job.alpha > 0):
        raise InputError(f"--alpha must be a positive number, got {job.alpha}")
    if job.schedule not in loop.SCHEDULES:
        raise InputError(f"--schedule {job.schedule!r}: expected one of {', '.join(loop.SCHEDULES)}")
    if job.precision not in loop.PRECISIONS:
        raise InputError(f"--precision {job.precision!r}: expected one of {', '.join(loop.PRECISIONS)}")
    if any(not m for m in job.target_modules):
        raise InputError("--target-modules must name at least one module, comma-separated (e.g. q_proj,v_proj)")


def _check_checkpoints(job: FinetuneJob) -> None:
    """--resume needs a complete checkpoint; a fresh run refuses to overwrite one unless --force."""
    where = job.checkpoints
    foreign = _foreign_checkpoints(where)
    if foreign:
        raise InputError(foreign)
    latest = loop.latest_checkpoint(where) if where.is_dir() else None
    if job.resume and latest is None:
        raise InputError(f"--resume: no complete checkpoint in {where} (--checkpoint-dir)")
    if job.resume:
        _check_resumable(job, where)
    if not job.resume and where.exists() and not job.force:
        raise InputError(f"{where} holds the checkpoints of an earlier run: pass --resume to continue it, or "
                         "--force to start over")


def _foreign_checkpoints(where: Path) -> str | None:
    """Why the checkpoint folder may not be used: the run deletes it once the adapter is published (and with
    --force before it starts), so it must be absent, empty, or hold only a ropeconv fine-tune's checkpoints
    (its run record, step-N folders) — never a user's folder, even with --force."""
    if not os.path.lexists(where):
        return None
    if os.path.islink(where) or not os.path.isdir(where):
        return f"--checkpoint-dir {where} exists and is not a folder of checkpoints; ropeconv will not replace it, " \
               "even with --force — choose another --checkpoint-dir"
    names = sorted(os.listdir(where))
    if names and (RUN_RECORD not in names
                  or any(n != RUN_RECORD and not n.startswith(loop.CHECKPOINT_PREFIX) for n in names)):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return f"--checkpoint-dir {where} holds files that are not a ropeconv fine-tune's checkpoints ({shown}); " \
               "ropeconv deletes that folder when the run ends, so it will not use it, even with --force — choose " \
               "another --checkpoint-dir"
    return None


def run_fingerprint(job: FinetuneJob) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (processes and micro-batch may change). Device and
    precision are recorded as this machine resolves them (auto → cuda/cpu, bf16/fp16/no), so a resume in another
    precision is refused."""
    keys = ("train_ctx", "target_ctx", "sampling", "n_segments", "method", "steps", "max_tokens", "lr",
            "warmup_steps", "schedule", "rank", "alpha", "target_modules", "batch", "seed", "rebase")
    record = {k: getattr(job, k) for k in keys}
    record["device"], record["precision"] = loop.resolve_run(job.device, job.precision)
    record.update(base=str(Path(job.base).resolve()), text=str(Path(job.text).resolve()),
                  options=json.loads(json.dumps(dict(job.options), default=str)),
                  target_modules=list(job.target_modules))
    return record


def _check_resumable(job: FinetuneJob, where: Path) -> None:
    try:
        saved = json.loads((where / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(f"--resume: {where / RUN_RECORD} is missing or unreadable; start over with --force") from None
    now = run_fingerprint(job)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        raise InputError(f"--resume: the checkpoints in {where} are of a run with other settings ("
                         + ", ".join(f"{k} {saved.get(k)!r} → {now.get(k)!r}" for k in changed[:3])
                         + "); resume with the same ones, or start over with --force")


def _linear_names(tensors) -> set[str]:
    """The last names of the 2-D weights (Linear / Conv1D) in the checkpoint, embeddings left out."""
    linear = {t.name.rsplit(".", 2)[-2] for t in tensors
              if t.name.endswith(".weight") and "." in t.name and len(t.shape) == 2}
    return linear - {"embed_tokens", "wte", "wpe", "embed_positions", "lm_head"}


def _default_target_modules(tensors) -> tuple[str, ...]:
    have = _linear_names(tensors)
    for names in ATTENTION_MODULES:
        if have.issuperset(names):
            return names
    raise InputError(f"no known attention projections in the base: give --target-modules (it has "
                     f"{', '.join(sorted(have))})")


def _check_target_modules(targets: tuple[str, ...], tensors) -> None:
    """Each target must be the last name of some 2-D weight (a Linear) in the checkpoint."""
    linear = _linear_names(tensors)
    missing = [t for t in targets if t not in linear]
    if missing:
        raise InputError(f"--target-modules {','.join(missing)}: no such linear module in the base "
                         f"(it has {', '.join(sorted(linear))})")


def _read_text(job: FinetuneJob) -> str:
    """--text, up to what the run can use: every step draws `batch` documents of (PoSE) 5·train-ctx or (segments)
    target-ctx tokens, so more than steps × batch documents' worth of text is never read (32 bytes a token, at
    least 1 MiB, at most MAX_TEXT_BYTES: a whole corpus is not tokenized in memory for a short run)."""
    doc_tokens = DOC_WINDOWS * job.train_ctx if job.sampling == "pose" else job.target_ctx
    budget = min(MAX_TEXT_BYTES, max(MIN_TEXT_BYTES, TEXT_BYTES_PER_TOKEN * doc_tokens * job.batch * job.n_steps))
    return read_text(Path(job.text), budget).text


def _tokenize(base: Path, text: str, vocab_size: int) -> tuple[list[int], int | None]:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(base)
        except Exception as exc:  # transformers raises OSError, ValueError, TypeError… for a missing tokenizer
            raise InputError(f"{base}: no usable tokenizer ({_first_line(exc)}); fine-tuning needs the base's "
                             "tokenizer to tokenize --text") from None
        ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    finally:
        hf_logging.set_verbosity(verbosity)
    bos = tokenizer.bos_token_id
    biggest = max(ids + ([bos] if bos is not None else []), default=-1)
    if vocab_size and biggest >= vocab_size:
        raise InputError(f"{base}: the tokenizer yields id {biggest}, beyond the model's vocab_size {vocab_size}")
    return ids, bos


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return (text[:160] + "…") if len(text) > 160 else text or type(exc).__name__


def cut_documents(ids: list[int], length: int, shortest: int, bos: int | None) -> list[list[int]]:
    """Documents of `length` tokens (BOS first when there is one); a tail under `shortest` joins the last."""
    head = [bos] if bos is not None else []
    body = length - len(head)
    docs: list[list[int]] = []
    for start in range(0, len(ids), body):
        piece = ids[start:start + body]
        if len(head) + len(piece) >= shortest:
            docs.append(head + piece)
        elif docs:
            docs[-1].extend(piece)
    return docs


def sample_rule(job: FinetuneJob):
    """(rng, document length) -> (ranges, position ids) for the job's sampling."""
    if job.sampling == "pose":
        return partial(_pose_rule, job.train_ctx, job.target_ctx)
    return partial(_segments_rule, job.train_ctx, job.target_ctx, job.n_segments)


def _pose_rule(train_ctx, target_ctx, rng: random.Random, n: int):
    return pose_sample(rng, n, train_ctx, target_ctx)


def _segments_rule(train_ctx, target_ctx, n_segments, rng: random.Random, n: int):
    return segments_sample(rng, n, train_ctx, target_ctx, n_segments)


# ----------------------------------------------------------------------------- the model


def load_model(base: Path, plan, device, dtype):
    """The base in transformers with the plan's positions installed, dropout off; sdpa attention where it exists."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from ropeconv.parity.reference import install_plan_rotary, install_plan_table

    hf_logging.disable_progress_bar()  # weight-loading bars would drown ropeconv's own progress lines
    hf_logging.set_verbosity_error()
    config = AutoConfig.from_pretrained(base)
    for key, value in config.to_dict().items():
        if ("dropout" in key or "pdrop" in key) and isinstance(value, float):
            setattr(config, key, 0.0)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, config=config, dtype=dtype, attn_implementation="sdpa")
    except (ValueError, ImportError):
        model = AutoModelForCausalLM.from_pretrained(base, config=config, dtype=dtype, attn_implementation="eager")
    if plan.kind == "absolute":
        install_plan_table(model, plan)
    elif install_plan_rotary(model, plan) == 0:
        raise InputError(f"{type(model).__name__} has no *RotaryEmbedding module to train the rope scaling in")
    model.config.use_cache = False
    return model.to(device)


def forward_loss(model, input_ids, position_ids):
    import torch

    mask = torch.ones_like(input_ids)  # explicit: no position jump may be read as a packed-sequence boundary
    return model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, labels=input_ids,
                 use_cache=False).loss


def with_lora(model, job: FinetuneJob, targets: tuple[str, ...]):
    peft = require_peft()
    config = peft.LoraConfig(r=job.rank, lora_alpha=job.alpha, lora_dropout=0.0, bias="none",
                             target_modules=list(targets), task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # peft calls transformers APIs that warn of their own deprecation
            warnings.simplefilter("ignore")
            return peft.get_peft_model(model, config)
    except ValueError as exc:
        raise InputError(f"--target-modules: {_first_line(exc)}") from None


# ----------------------------------------------------------------------------- the run


def run(job: FinetuneJob, progress: Progress | None = None) -> FinetuneResult:
    """Train and publish. Under `accelerate launch` / `torchrun` every process calls this; the main one holds the
    output's lock and writes the adapter."""
    progress = progress or Progress(enabled=False)
    prepared = prepare(job)
    accelerator = loop.make_accelerator(job.device, job.precision, job.batch, job.micro_batch)
    try:
        if not accelerator.is_main_process:
            return _run(prepared, accelerator, Progress(enabled=False))
        with target_lock(Path(job.out)):  # the whole run: a second run to this -o is refused, not raced
            return _run(prepared, accelerator, progress)
    finally:
        try:
            loop.end_process_group(accelerator)  # the process group, when this run joined one
        finally:
            if accelerator.num_processes == 1:
                loop.release_state()


def _run(prepared: Prepared, accelerator, progress: Progress) -> FinetuneResult:
    import torch

    job, plan = prepared.job, prepared.plan
    steps = job.n_steps
    # frozen base weights in the half type autocast computes in (LoRA stays fp32: peft's autocast_adapter_dtype);
    # FSDP keeps one dtype per shard and casts by its own mixed-precision policy, so it gets fp32
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    dtype = torch.float32 if accelerator.distributed_type.value == "FSDP" else half
    torch.manual_seed(job.seed)  # the LoRA A initialisation: the same on every process
    model = load_model(prepared.base, plan, torch.device("cpu"), dtype)
    if job.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = with_lora(model, job, prepared.target_modules)
    checkpoints = job.checkpoints
    if accelerator.is_main_process and not job.resume:
        shutil.rmtree(checkpoints, ignore_errors=True)  # a previous run's, refused above unless --force
    if accelerator.is_main_process:
        checkpoints.mkdir(parents=True, exist_ok=True)
        if not job.resume:
            (checkpoints / RUN_RECORD).write_text(json.dumps(run_fingerprint(job), sort_keys=True) + "\n",
                                                  encoding="utf-8")
    spec = loop.LoopSpec(steps=steps, global_batch=job.batch, micro_batch=job.micro_batch, lr=job.lr,
                         warmup_steps=job.warmup_steps, schedule=job.schedule, seed=job.seed, train_ctx=job.train_ctx,
                         checkpoint_dir=checkpoints,
                         save_every_steps=job.save_every or max(1, steps // 10), resume=job.resume)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    progress.note(f"finetune {job.sampling}: {plan.method} {plan.original_ctx} → {plan.target_ctx} tokens "
                  f"(×{plan.factor:g}), window {job.train_ctx}"
                  + (f" in {job.n_segments} segments" if job.sampling == "segments" else "")
                  + f", LoRA r={job.rank} α={job.alpha:g} on {','.join(prepared.target_modules)} ({n_trainable} "
                  f"trainable); {len(prepared.documents)} documents, {prepared.n_tokens} tokens; {steps} steps × "
                  f"global batch {job.batch} on {accelerator.num_processes} {accelerator.device.type} process"
                  f"{'es' * (accelerator.num_processes > 1)} ({accelerator.distributed_type.value}), precision "
                  f"{accelerator.mixed_precision}")
    rule = sample_rule(job)
    draw = partial(global_batch, job.seed, documents=prepared.documents, size=job.batch, rule=rule)
    try:
        model, trained = loop.train(accelerator, model, spec, draw, progress, forward_loss)
    except BaseException:
        # a fresh run that dies before its first complete checkpoint (prepare, the first steps, a signal) leaves
        # nothing to resume: its folder (run.json alone) would only block the retry, so it goes
        if accelerator.is_main_process and not job.resume and loop.latest_checkpoint(checkpoints) is None:
            shutil.rmtree(checkpoints, ignore_errors=True)
        raise

    state = accelerator.get_state_dict(model)  # every process takes part (FSDP gathers the shards)
    record = rope_record(prepared)
    files: list[str] = []
    if accelerator.is_main_process:
        files = _publish(job, accelerator.unwrap_model(model), state, record)
        shutil.rmtree(checkpoints, ignore_errors=True)  # the adapter is out: nothing left to resume
    accelerator.wait_for_everyone()
    return FinetuneResult(out=Path(job.out), published=accelerator.is_main_process, rope=record, trained=trained, device=accelerator.device.type,
                          n_tokens=prepared.n_tokens, n_documents=len(prepared.documents), files=files)


def _publish(job: FinetuneJob, model, state, record) -> list[str]:
    model.eval()
    with staged_dir(Path(job.out), job.force) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.save_pretrained(tmp, state_dict=state)
        (tmp / ROPE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for path in tmp.iterdir():  # readable like any published file (safetensors may write 0600)
            os.chmod(path, 0o666 & ~_umask())
        # lists every file, so a later --force may replace this adapter (staging.replace_refusal)
        write_manifest(tmp, {"kind": "lora-adapter", "rope": record})
        return sorted(p.name for p in tmp.iterdir())
