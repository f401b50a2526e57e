"""llama.cpp (through llama-cpp-python) running a GGUF, every token placed at the position it is given.

`Llama.eval` always numbers tokens n_past, n_past+1, …, so a probe placed at an offset (positions
7680–8703 for an 8k model) cannot go through it. This module fills a `llama_batch` itself — token,
position, sequence 0, output flag per entry — and calls `llama_decode` chunk by chunk on an emptied
memory, then reads each chunk's logits with `llama_get_logits`. Everything else (model and context
construction, rope overrides) goes through `llama_cpp.Llama`, so a candidate is run exactly as a user
of the library would run it.

Positions and n_ctx: llama.cpp stores a position per KV cell and never compares it with n_ctx (the
batch check, llama_batch_allocr::init, only requires that a sequence's positions be contiguous and
continue the memory's last one; the rope and the causal mask read the positions themselves). n_ctx
only sizes the KV cache (padded to 256 cells), so it must hold the probe's tokens, not its last
position. Neither linear nor YaRN scaling in llama.cpp reads n_ctx (YaRN reads yarn_orig_ctx), so for
them the choice of n_ctx does not change the math (measured: logits bit-identical with n_ctx 1024 and
8960 at positions 7680–8703). One exception: LongRoPE picks its long or short factor tensor once per
context, from n_ctx (padded to 256) > original context (llama_model::get_rope_factors), where
transformers decides per forward from max(position) + 1; `run_passes` therefore gives a file with
rope_factors_long a context of last position + 1 per pass (exact when the original context is a
multiple of 256, as it is in practice).

Noise: llama.cpp's rope computes angles by repeated float32 multiplication (ggml_rope_cache_init), so
its float error grows with position: on a float32 GGUF it matches transformers to 2e-4 below 1k and
9e-3 around 8k (max |Δlogit|, SmolLM2). Quantized weights add far more: Q4_1 matmuls on q8-rounded
activations put SmolLM2 at max |Δlogit| 1–5, mean KL 5e-3–8e-3, top-1 87–91% against the float32
dequantized weights, which hides rope errors below ~1% (see the parity tolerance for GGUF).

RUNTIME is this engine behind the Runtime interface (base.py): its rope noise, its own micro-batches, and no
decode steps of its own (a pass's tokens go through llama_decode in chunks of N_BATCH).
"""

from __future__ import annotations

import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ropeconv.checkpoint.gguf_scheme import check_epsilons
from ropeconv.errors import InputError
from ropeconv.gguf_io.reader import read_gguf

# llama.cpp's log, captured: shared with the quantizer (gguf_export), which sits below parity
from ropeconv.llamacpp_log import captured_log as _captured_log
from ropeconv.llamacpp_log import first_error as _first_error
from ropeconv.parity.runtimes.base import RuntimeBase

NAME = "llama.cpp"
# ggml builds rope angles by repeated float32 multiplication (theta *= base^(-2/d)), so its error
# grows with position: measured max|Δlogit| 8.8e-3 at 8.2k on a float32 SmolLM2 with the right
# rope (3.5e-2 expected near 32k), while a 0.1% attention-factor error gives 0.12. The strict
# tolerance is widened to this × last position where that is larger than the fixed one.
POSITION_NOISE = 3e-6

N_BATCH = 512  # tokens per llama_decode call (and per micro-batch): one chunk's logits are 512 × vocab floats
SEED = 20231  # llama.cpp only uses it for sampling; fixed so that nothing here depends on the clock
INSTALL_HINT = "pip install 'ropeconv[gguf]'"


@dataclass
class LlamaCppHandle:
    llama: Any  # llama_cpp.Llama
    batch: Any  # llama_cpp.llama_batch with room for n_batch tokens, one sequence id each
    n_batch: int
    n_ctx: int  # KV cells, as llama.cpp padded them
    n_vocab: int
    path: Path

    def close(self) -> None:
        self._finalizer()

    def __post_init__(self) -> None:
        self._finalizer = weakref.finalize(self, _release, self.llama, self.batch)


def _release(llama, batch) -> None:
    import llama_cpp

    llama_cpp.llama_batch_free(batch)
    llama.close()


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise InputError(f"the llama.cpp runtime needs llama-cpp-python: {INSTALL_HINT}") from None
    return llama_cpp


def _gguf_file(artifact: Path) -> Path:
    artifact = Path(artifact)
    if artifact.is_dir():
        found = sorted(artifact.glob("*.gguf"))
        if len(found) != 1:
            raise InputError(f"{artifact}: expected exactly one .gguf file, found {len(found)}")
        return found[0]
    if not artifact.is_file():
        raise InputError(f"{artifact}: GGUF file not found")
    return artifact


def load(artifact: Path, device: torch.device, n_ctx: int, **llama_kwargs) -> LlamaCppHandle:
    """Load a GGUF with room for n_ctx tokens (KV cells; positions may go beyond it).

    llama_kwargs go to llama_cpp.Llama on top of ours, e.g. rope_freq_scale=0.25 to override the file's rope.
    """
    llama_cpp = _import_llama_cpp()
    path = _gguf_file(artifact)
    check_epsilons(read_gguf(path))  # a negative epsilon aborts the process inside llama.cpp's graph (exit 134)
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be positive, got {n_ctx}")
    threads = os.cpu_count() or 1
    kwargs = dict(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=N_BATCH,
        n_ubatch=N_BATCH,
        # logits_all would make Llama keep an n_ctx × vocab score matrix for Llama.eval, which is not
        # used here: the per-token output flags of our own batch decide which logits llama.cpp computes.
        logits_all=False,
        n_gpu_layers=-1 if torch.device(device).type == "cuda" and gpu_offload() else 0,
        seed=SEED,
        n_threads=threads,
        n_threads_batch=threads,
        # keys and values kept in float32: the KV cache type is a runtime storage choice, not part of the
        # artifact, and llama.cpp's default f16 cache alone moves SmolLM2's logits by up to 9e-2 (measured),
        # which would hide a 0.1% rope error (2e-2). Flash attention stays off (its CPU path rounds to f16 too).
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        flash_attn=False,
        verbose=False,
    )
    kwargs.update(llama_kwargs)
    with _captured_log(llama_cpp) as log:
        try:
            llama = llama_cpp.Llama(**kwargs)
        except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError with a generic text
            raise InputError(f"{path}: llama.cpp could not load it: {_first_error(log, str(exc))}") from None
    ctx = llama._ctx.ctx
    n_batch = int(llama_cpp.llama_n_batch(ctx))
    batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
    vocab = llama_cpp.llama_model_get_vocab(llama._model.model)
    return LlamaCppHandle(
        llama=llama,
        batch=batch,
        n_batch=n_batch,
        n_ctx=int(llama_cpp.llama_n_ctx(ctx)),
        n_vocab=int(llama_cpp.llama_vocab_n_tokens(vocab)),
        path=path,
    )


@torch.no_grad()
def logits(handle: LlamaCppHandle, input_ids: torch.Tensor, position_ids: torch.Tensor,
           scratch: Path | None = None) -> torch.Tensor:
    """[N, vocab] float32 logits for input_ids [1, N] placed at position_ids [1, N] (contiguous, ascending)."""
    import numpy as np

    from ropeconv.parity.logit_rows import allocate

    llama_cpp = _import_llama_cpp()
    ids = input_ids.reshape(-1).to(torch.int64).tolist()
    positions = position_ids.reshape(-1).to(torch.int64).tolist()
    n = len(ids)
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or position_ids.shape != input_ids.shape:
        raise ValueError(f"expected input_ids and position_ids of shape [1, N], got {tuple(input_ids.shape)} "
                         f"and {tuple(position_ids.shape)}")
    if n == 0:
        return torch.empty(0, handle.n_vocab)
    first = positions[0]
    # llama.cpp requires one sequence's positions to be contiguous and to continue its memory
    if first < 0 or positions != list(range(first, first + n)):
        raise ValueError("llama.cpp needs contiguous ascending positions (p, p+1, …)")
    if n > handle.n_ctx:
        raise ValueError(f"{n} tokens do not fit the {handle.n_ctx} KV cells of this context; load with n_ctx ≥ {n}")
    if min(ids) < 0 or max(ids) >= handle.n_vocab:
        raise ValueError(f"token ids must lie in [0, {handle.n_vocab})")

    ctx = handle.llama._ctx.ctx
    memory = llama_cpp.llama_get_memory(ctx)
    batch = handle.batch
    out = allocate(n, handle.n_vocab, scratch)
    with _captured_log(llama_cpp) as log:
        # start from an empty memory; the probe stays in it afterwards, so llama.cpp itself can be asked
        # where the tokens sit (llama_memory_seq_pos_min/max), until the next call clears it
        llama_cpp.llama_memory_clear(memory, True)
        handle.llama.n_tokens = 0  # keep the high-level Llama from assuming a prefix of its own
        for start in range(0, n, handle.n_batch):
            m = min(handle.n_batch, n - start)
            batch.n_tokens = m
            for i in range(m):
                batch.token[i] = ids[start + i]
                batch.pos[i] = first + start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1  # an output row for every token
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} at tokens {start}–{start + m - 1}: {_first_error(log, 'no message')}")
            # the outputs of this decode, in batch order: m rows of n_vocab
            chunk = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(m * handle.n_vocab,))
            out[start : start + m] = chunk.reshape(m, handle.n_vocab)
    return torch.from_numpy(out)


def load_vocab(artifact: Path):
    """The GGUF's tokenizer alone (a vocab-only llama_cpp.Llama: milliseconds), as llama.cpp's users tokenize."""
    llama_cpp = _import_llama_cpp()
    path = Path(artifact)
    with _captured_log(llama_cpp) as log:
        try:
            return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        except Exception as exc:  # llama-cpp-python's generic ValueError
            raise InputError(f"{path}: llama.cpp could not load it: {_first_error(log, str(exc))}") from None


def captured_log():
    """llama.cpp's log held back (shown in an error only) while calls through llama_cpp.Llama run."""
    return _captured_log(_import_llama_cpp())


def gpu_offload() -> bool:
    """Whether this llama.cpp was built with a GPU backend (`make install LLAMA=cuda`): its layers then go to the
    GPU on a cuda run; a CPU build runs there on the CPU, and the report says so."""
    return bool(_import_llama_cpp().llama_supports_gpu_offload())


def device_used(device: torch.device) -> str:
    return "cuda" if torch.device(device).type == "cuda" and gpu_offload() else "cpu"


def device_note(device: torch.device) -> str | None:
    if torch.device(device).type == "cuda" and not gpu_offload():
        return ("llama.cpp here is a CPU build (llama_supports_gpu_offload() is false), so the GGUF ran on the CPU; "
                "`make install LLAMA=cuda` builds it with CUDA")
    return None


def run_passes(artifact: Path, device: torch.device, ids: torch.Tensor, passes, *, scratch: Path | None = None,
               progress=None, **_placement) -> list[torch.Tensor]:
    """Logits per probe pass, each [n_tokens, vocab], tokens at the pass's positions."""
    from ropeconv.parity.probe import pass_done

    path = _gguf_file(artifact)
    switched = _length_switched(path)
    handle, handle_ctx, out = None, None, []
    try:
        for index, p in enumerate(passes, 1):
            started = time.monotonic()
            # one context for every pass, holding the longest; per pass for LongRoPE (see the module docstring)
            n_ctx = max(p.n_tokens, p.last_position + 1) if switched else max(q.n_tokens for q in passes)
            if n_ctx != handle_ctx:
                if handle is not None:
                    handle.close()
                handle, handle_ctx = load(path, device, n_ctx), n_ctx
            assert handle is not None  # loaded for the first pass (handle_ctx was None)
            out.append(logits(handle, ids[:, : p.n_tokens], p.position_ids(), scratch))
            pass_done(progress, index, len(passes), p, started)
    finally:
        if handle is not None:
            handle.close()
    return out


def _length_switched(path: Path) -> bool:
    """Whether llama.cpp would choose between long and short rope factors by context size."""
    from ropeconv.gguf_io import read_gguf

    try:
        index = read_gguf(path)  # the header only: ~0.1 s where gguf.GGUFReader takes 3 s on SmolLM2
    except InputError:  # not readable: load() says why, in llama.cpp's words
        return False
    # a rope_freqs tensor takes precedence over both sets (llama_model::get_rope_factors)
    return index.tensor("rope_factors_long.weight") is not None and index.tensor("rope_freqs.weight") is None


class LlamaCppRuntime(RuntimeBase):
    """llama.cpp: every token at its own position through a llama_batch; on the GPU only when built with CUDA."""

    name = NAME
    position_noise = POSITION_NOISE
    supports_decode_steps = False  # a pass's tokens go through llama_decode in chunks of micro_batch_tokens
    micro_batch_tokens = N_BATCH

    def require(self) -> None:
        _import_llama_cpp()

    def load(self, artifact, device, *, target=None, n_ctx=0, placement=None, scratch=None,
             progress=lambda _: None):
        return load(artifact, device, n_ctx)

    def logits(self, loaded, input_ids, position_ids, *, decode_steps=0, chunk_tokens=0, lead_tokens=0,
               scratch=None):
        return logits(loaded, input_ids, position_ids, scratch)

    def close(self, loaded) -> None:
        loaded.close()

    def run_passes(self, artifact, device, ids, passes, *, target=None, placement=None, scratch=None,
                   progress=None):
        return run_passes(artifact, device, ids, passes, scratch=scratch, progress=progress)

    def ran_on(self, device, targets):
        return device_used(device)

    def fallback_notes(self, device, artifact, targets):
        note = device_note(device)
        return (note,) if note else ()


RUNTIME = LlamaCppRuntime()
