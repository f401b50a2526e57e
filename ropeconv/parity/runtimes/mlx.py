"""mlx-lm running an mlx folder as its users do: `mlx_lm.load`, then the probe's prefill and its decode steps one
token at a time through mlx-lm's own KV cache (mlx_lm.models.cache.make_prompt_cache). mlx-lm places tokens at
the cache's offset; a probe that starts past position 0 shifts every layer's rope by that many positions
(the cache and the mask are untouched). mlx runs on the CPU here (Metal on a Mac); logits come back as float32
torch tensors on the CPU. RUNTIME is this engine behind the Runtime interface (base.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ropeconv.errors import InputError
from ropeconv.parity.runtimes.base import RuntimeBase

NAME = "mlx-lm"
INSTALL_HINT = "pip install 'ropeconv[mlx]' (mlx[cpu] and mlx-lm on Linux, mlx and mlx-lm on macOS)"


def _mlx_lm():
    try:
        import mlx.core
        import mlx_lm
    except ImportError:
        raise InputError(f"mlx-lm is not installed; {INSTALL_HINT}") from None
    return mlx.core, mlx_lm


class _ShiftedRope:
    """A layer's rope applied `shift` positions further on (mlx-lm passes the cache's offset)."""

    def __init__(self, rope: Any, shift: int) -> None:
        self.rope, self.shift = rope, shift

    def __call__(self, x: Any, offset: int = 0) -> Any:
        return self.rope(x, offset=offset + self.shift)


class Loaded:
    def __init__(self, model: Any, path: Path) -> None:
        self.model, self.path = model, path

    def attentions(self) -> list[Any]:
        inner = getattr(self.model, "model", self.model)
        return [layer.self_attn for layer in getattr(inner, "layers", [])]

    def shift_ropes(self, shift: int) -> None:
        for attention in self.attentions():
            rope = attention.rope
            base = rope.rope if isinstance(rope, _ShiftedRope) else rope
            attention.rope = _ShiftedRope(base, shift) if shift else base


def spans(n_tokens: int, decode_steps: int, chunk_tokens: int, lead_tokens: int) -> list[tuple[int, int]]:
    """[start, end) of each call: the prefill (chunked; the first call at least lead_tokens), then one token per
    decode step (as probe.Pass.prefill_chunks)."""
    prefill = n_tokens - decode_steps
    step = chunk_tokens or prefill
    first = min(prefill, max(step, lead_tokens))
    out = [(0, first)] + [(a, min(a + step, prefill)) for a in range(first, prefill, step)]
    return out + [(i, i + 1) for i in range(prefill, n_tokens)]


def run(loaded: Loaded, ids: list[int], first_position: int, decode_steps: int = 0, chunk_tokens: int = 0,
        lead_tokens: int = 0):
    """Logits [n, vocab] float32 (numpy) of ids placed at first_position …, through a fresh KV cache."""
    import numpy as np

    mx, _ = _mlx_lm()
    from mlx_lm.models.cache import make_prompt_cache

    if first_position and not loaded.attentions():
        raise InputError(f"{loaded.path}: mlx-lm's model has no layers' rope to place a probe at position "
                         f"{first_position}")
    loaded.shift_ropes(first_position)
    try:
        cache = make_prompt_cache(loaded.model)
        rows = []
        for a, b in spans(len(ids), decode_steps, chunk_tokens, lead_tokens):
            logits = loaded.model(mx.array([ids[a:b]]), cache=cache)[0].astype(mx.float32)
            mx.eval(logits)
            rows.append(np.array(logits))
        return np.concatenate(rows, axis=0)
    finally:
        loaded.shift_ropes(0)


class MlxRuntime(RuntimeBase):
    name = NAME

    def require(self) -> None:
        _mlx_lm()

    def ran_on(self, device, targets) -> str:
        mx, _ = _mlx_lm()
        return "metal" if mx.default_device() == mx.gpu else "cpu"

    def fallback_notes(self, device, artifact, targets):
        if device.type == "cuda":
            return ("mlx-lm ran on the CPU (mlx has no CUDA backend here)",)
        return ()

    def load(self, artifact, device, *, target=None, n_ctx=0, placement=None, scratch=None, progress=lambda _: None):
        _, mlx_lm = _mlx_lm()
        try:
            model, _tokenizer = mlx_lm.load(str(artifact))
        except (ValueError, FileNotFoundError, KeyError) as exc:
            raise InputError(f"{artifact}: mlx-lm cannot load it ({str(exc).splitlines()[0][:300]})") from None
        return Loaded(model, Path(artifact))

    def logits(self, loaded, input_ids, position_ids, *, decode_steps=0, chunk_tokens=0, lead_tokens=0,
               scratch=None):
        import torch

        positions = position_ids[0].tolist()
        if positions != list(range(positions[0], positions[0] + len(positions))):
            raise InputError("mlx-lm places tokens at consecutive positions only")
        found = run(loaded, input_ids[0].tolist(), int(positions[0]), decode_steps, chunk_tokens, lead_tokens)
        return torch.from_numpy(found)

    def close(self, loaded) -> None:
        loaded.model = None


RUNTIME = MlxRuntime()
