"""The PoSE LoRA fine-tune: validate everything, train, then publish a PEFT adapter directory atomically.

The rope scaling is applied exactly as the reference computes it: every *RotaryEmbedding module is
replaced by ropeconv.parity.reference's PlanRotaryEmbedding, which evaluates the same RopePlan that
`ropeconv extend BASE --method M --target-ctx N` builds (cos/sin from the plan's divisors and attention
factor at the running maximum position; no gradient flows through it). LoRA comes from peft (an optional
dependency, imported lazily); only the adapter weights train.

Data: the text is tokenized whole with the base's tokenizer (no special tokens), then cut into documents of
5·train_ctx tokens (the official code truncates each document to 5·Lc), each led by the tokenizer's BOS when
it has one; a tail shorter than train_ctx joins the previous document. Every step draws `batch` samples: a
document uniformly, then pose_sample's content ranges and position ids. Labels are the input ids (as in the
official code); an all-ones attention mask is passed so transformers does not read the position jump as the
start of a packed second sequence (it would then block attention across the chunks).

The output holds what peft's save_pretrained writes (adapter_config.json, adapter_model.safetensors and its
README.md) plus ropeconv_rope.json, the rope scaling the adapter was trained under (see `rope_record`).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ropeconv import methods
from ropeconv.errors import InputError
from ropeconv.export.staging import _umask, check_target, staged_dir, target_lock
from ropeconv.finetune.pose import gather, pose_sample
from ropeconv.manifest import write_manifest
from ropeconv.methods.base import ExtendRequest
from ropeconv.progress import Progress

ROPE_RECORD = "ropeconv_rope.json"
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MIN_TRAIN_CTX = 8
DOC_WINDOWS = 5  # documents are cut to this many training windows (official: max_length = 5·Lc)
PEFT_MISSING = "ropeconv finetune needs peft: pip install 'ropeconv[finetune]'"


@dataclass(frozen=True)
class PoseJob:
    base: Path
    text: Path
    out: Path
    train_ctx: int
    target_ctx: int
    method: str = "yarn"
    options: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 100
    lr: float = 1e-4
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    batch: int = 1
    seed: int = 0
    device: str = "auto"
    force: bool = False
    rebase: bool = False


@dataclass
class Prepared:
    job: PoseJob
    base: Path  # absolute
    plan: Any  # RopePlan
    documents: list[list[int]]
    n_tokens: int


@dataclass
class PoseResult:
    out: Path
    rope: dict[str, Any]
    losses: list[float]
    seconds: float
    device: str
    n_tokens: int
    n_documents: int
    files: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "rope": self.rope, "steps": len(self.losses), "losses": self.losses,
                "loss_first": self.losses[0], "loss_last": self.losses[-1], "seconds": round(self.seconds, 3),
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
    return {
        "method": plan["method"],
        "original_ctx": plan["original_ctx"],
        "target_ctx": plan["target_ctx"],
        "factor": plan["factor"],
        "params": json.loads(json.dumps(plan["params"], default=str)),
        "train_ctx": prepared.job.train_ctx,
        "base": str(prepared.base),
    }


# ----------------------------------------------------------------------------- validation (writes nothing)


def prepare(job: PoseJob) -> Prepared:
    _check_numbers(job)
    require_peft()
    check_target(Path(job.out), job.force)
    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.checkpoint.rope_config import describe_scaling

    ckpt = load_checkpoint(job.base)
    method = methods.get(job.method)
    methods.check_applies(method, ckpt.scheme, ckpt.arch.model_type)
    if method.NAME == "none":
        raise InputError("--method none is no extension; choose a RoPE scaling method to train under")
    existing = ckpt.scheme.existing_scaling
    if existing and not job.rebase:
        raise InputError(
            f"{job.base} already carries rope scaling ({describe_scaling(existing)}, original context "
            f"{ckpt.scheme.original_ctx}); pass --rebase to train under the new method from the unscaled positions"
        )
    plan = method.plan(ckpt.scheme, ExtendRequest(target_ctx=job.target_ctx, options=dict(job.options)))
    _check_target_modules(job.target_modules, ckpt.tensors)
    text = _read_text(job.text)
    ids, bos = _tokenize(ckpt.path, text, int(ckpt.config.get("vocab_size") or 0))
    documents = cut_documents(ids, job.train_ctx, bos)
    n_tokens = sum(len(d) for d in documents)
    if not documents:
        raise InputError(f"--text {job.text}: {len(ids) + (bos is not None)} tokens with the base's tokenizer; "
                         f"--train-ctx {job.train_ctx} needs at least {job.train_ctx}")
    return Prepared(job=job, base=Path(ckpt.path).resolve(), plan=plan, documents=documents, n_tokens=n_tokens)


def _check_numbers(job: PoseJob) -> None:
    n, big = job.train_ctx, job.target_ctx
    if n < MIN_TRAIN_CTX:
        raise InputError(f"--train-ctx must be at least {MIN_TRAIN_CTX}, got {n}")
    if n >= big:
        raise InputError(f"--train-ctx {n} must be smaller than --target-ctx {big} (PoSE trains a short window "
                         "for a longer target)")
    if job.steps < 1:
        raise InputError(f"--steps must be at least 1, got {job.steps}")
    if not (math.isfinite(job.lr) and job.lr > 0):
        raise InputError(f"--lr must be a positive number, got {job.lr}")
    if job.rank < 1:
        raise InputError(f"--rank must be at least 1, got {job.rank}")
    if not (math.isfinite(job.alpha) and job.alpha > 0):
        raise InputError(f"--alpha must be a positive number, got {job.alpha}")
    if job.batch < 1:
        raise InputError(f"--batch must be at least 1, got {job.batch}")
    if not job.target_modules or any(not m for m in job.target_modules):
        raise InputError("--target-modules must name at least one module, comma-separated (e.g. q_proj,v_proj)")


def _check_target_modules(targets: tuple[str, ...], tensors) -> None:
    """Each target must be the last name of some 2-D weight (a Linear) in the checkpoint."""
    linear = {t.name.rsplit(".", 2)[-2] for t in tensors
              if t.name.endswith(".weight") and "." in t.name and len(t.shape) == 2}
    linear.discard("embed_tokens")
    missing = [t for t in targets if t not in linear]
    if missing:
        raise InputError(f"--target-modules {','.join(missing)}: no such linear module in the base "
                         f"(it has {', '.join(sorted(linear))})")


def _read_text(path: Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--text {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"--text {path}: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"--text {path}: cannot read ({exc.strerror or exc})") from None
    if not text.strip():
        raise InputError(f"--text {path}: the file is empty")
    return text


def _tokenize(base: Path, text: str, vocab_size: int) -> tuple[list[int], int | None]:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(base)
        except Exception as exc:  # transformers raises OSError, ValueError, TypeError… for a missing tokenizer
            raise InputError(f"{base}: no usable tokenizer ({_first_line(exc)}); PoSE needs the base's tokenizer "
                             "to tokenize --text") from None
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


def cut_documents(ids: list[int], train_ctx: int, bos: int | None) -> list[list[int]]:
    """Documents of DOC_WINDOWS·train_ctx tokens (BOS first when there is one); a short tail joins the last."""
    head = [bos] if bos is not None else []
    body = DOC_WINDOWS * train_ctx - len(head)
    docs: list[list[int]] = []
    for start in range(0, len(ids), body):
        piece = ids[start:start + body]
        if len(head) + len(piece) >= train_ctx:
            docs.append(head + piece)
        elif docs:
            docs[-1].extend(piece)
    return docs


# ----------------------------------------------------------------------------- training


def sample_batch(rng: random.Random, documents: list[list[int]], batch: int, train_ctx: int, target_ctx: int):
    """(input_ids, position_ids) as lists of `batch` rows of train_ctx ints."""
    ids, pos = [], []
    for _ in range(batch):
        doc = documents[rng.randrange(len(documents))]
        ranges, positions = pose_sample(rng, len(doc), train_ctx, target_ctx)
        ids.append(gather(doc, ranges))
        pos.append(positions)
    return ids, pos


def load_model(base: Path, plan, device, dtype):
    """The base in transformers with the plan's rotary installed; sdpa attention where the model has it."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from ropeconv.parity.reference import install_plan_rotary

    hf_logging.disable_progress_bar()  # weight-loading bars would drown ropeconv's own progress lines
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation="sdpa")
    except (ValueError, ImportError):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation="eager")
    if install_plan_rotary(model, plan) == 0:
        raise InputError(f"{type(model).__name__} has no *RotaryEmbedding module to train the rope scaling in")
    model.config.use_cache = False
    return model.to(device)


def forward_loss(model, input_ids, position_ids):
    import torch

    mask = torch.ones_like(input_ids)  # explicit: no position jump may be read as a packed-sequence boundary
    return model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, labels=input_ids,
                 use_cache=False).loss


def run(job: PoseJob, progress: Progress | None = None) -> PoseResult:
    with target_lock(Path(job.out)):  # the whole run: a second run to this -o is refused, not raced
        return _run(job, progress or Progress(enabled=False))


def _run(job: PoseJob, progress: Progress) -> PoseResult:
    prepared = prepare(job)
    peft = require_peft()
    import torch

    from ropeconv.parity.device import pick_device

    device = pick_device(job.device)
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    torch.manual_seed(job.seed)  # the LoRA A initialisation
    rng = random.Random(job.seed)  # the PoSE samples

    plan = prepared.plan
    model = load_model(prepared.base, plan, device, dtype)
    config = peft.LoraConfig(r=job.rank, lora_alpha=job.alpha, lora_dropout=0.0, bias="none",
                             target_modules=list(job.target_modules), task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # peft calls transformers APIs that warn of their own deprecation
            warnings.simplefilter("ignore", FutureWarning)
            model = peft.get_peft_model(model, config)
    except ValueError as exc:
        raise InputError(f"--target-modules: {_first_line(exc)}") from None
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=job.lr, weight_decay=0.0)

    progress.note(f"finetune pose: {plan.method} {plan.original_ctx} → {plan.target_ctx} tokens (×{plan.factor:g}), "
                  f"PoSE window {job.train_ctx}, LoRA r={job.rank} α={job.alpha:g} on {','.join(job.target_modules)} "
                  f"({sum(p.numel() for p in params)} trainable); {len(prepared.documents)} documents, "
                  f"{prepared.n_tokens} tokens; {job.steps} steps × batch {job.batch} on {device.type}")
    every = max(1, job.steps // 10)
    losses: list[float] = []
    start = time.monotonic()
    for step in range(1, job.steps + 1):
        ids, pos = sample_batch(rng, prepared.documents, job.batch, job.train_ctx, job.target_ctx)
        input_ids = torch.tensor(ids, dtype=torch.long, device=device)
        position_ids = torch.tensor(pos, dtype=torch.long, device=device)
        loss = forward_loss(model, input_ids, position_ids)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise InputError(f"the loss became {value} at step {step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(value)
        if step == 1 or step % every == 0 or step == job.steps:
            progress.note(f"step {step}/{job.steps}: loss {value:.4f} ({time.monotonic() - start:.1f} s)")
    seconds = time.monotonic() - start

    record = rope_record(prepared)
    model.eval()
    with staged_dir(Path(job.out), job.force) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.save_pretrained(tmp)
        (tmp / ROPE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
        for name in files:  # readable like any published file (safetensors may write 0600)
            os.chmod(tmp / name, 0o666 & ~_umask())
        # lists every file, so a later --force may replace this adapter (staging.replace_refusal)
        write_manifest(tmp, {"kind": "lora-adapter", "rope": record})
        files = sorted(p.name for p in tmp.iterdir())
    return PoseResult(out=Path(job.out), rope=record, losses=losses, seconds=seconds, device=device.type,
                      n_tokens=prepared.n_tokens, n_documents=len(prepared.documents), files=files)
