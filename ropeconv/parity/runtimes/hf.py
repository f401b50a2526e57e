"""transformers reloading a safetensors output directory through its own config.json, placed by accelerate
(ropeconv.device.placement) like the reference. RUNTIME is this engine behind the Runtime interface (base.py)."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from ropeconv.errors import InputError
from ropeconv.parity.runtimes.base import RuntimeBase

NAME = "transformers"


def load(artifact: Path, device: torch.device, placement=None, scratch: Path | None = None,
         progress=lambda _: None):
    import ropeconv.runtime
    from ropeconv.device.placement import load_placed

    model = load_placed(Path(artifact), device, placement, scratch, progress)
    ropeconv.runtime.apply(model)  # ALiBi scaling recorded under ropeconv_alibi_scaling, as a user would load it
    return model


@torch.no_grad()
def logits(model, input_ids: torch.Tensor, position_ids: torch.Tensor, decode_steps: int = 0, chunk_tokens: int = 0,
           scratch: Path | None = None, lead_tokens: int = 0) -> torch.Tensor:
    """[n, vocab] float32 on the CPU: the prefill of all but the last decode_steps tokens (in calls of chunk_tokens
    through transformers' KV cache when given; the first of lead_tokens when longer), then one token per call."""
    from ropeconv.device.placement import input_device
    from ropeconv.parity.logit_rows import allocate
    from ropeconv.parity.probe import Pass

    device = input_device(model)
    ids, positions = input_ids.to(device), position_ids.to(device)
    n = ids.shape[1]
    spans = Pass("", 0, n, decode_steps, chunk_tokens, lead_tokens).prefill_chunks()
    # ALiBi models take no position ids: their bias depends on distances only
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    rows, out = None, None
    for a, b in spans:
        extra = {"position_ids": positions[:, a:b]} if takes_positions else {}
        if out is not None:
            extra.update(cache_from(model, out))
        out = model(input_ids=ids[:, a:b], use_cache=len(spans) > 1, **extra)
        chunk = out.logits[0].float().cpu().numpy()
        if rows is None:
            rows = allocate(n, chunk.shape[-1], scratch)
        rows[a:b] = chunk
    return torch.from_numpy(rows)


def cache_from(model, out) -> dict:
    """The keyword that hands `out`'s KV cache to the next call: transformers 5.24 renamed past_key_values
    to cache (the old name warns); 4.x knows only the old one."""
    keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {keyword: getattr(out, "cache", None) or out.past_key_values}


def pass_logits(model, ids: torch.Tensor, p, scratch: Path | None = None) -> torch.Tensor:
    """One probe pass (ropeconv.parity.probe.Pass) through a loaded model."""
    return logits(model, ids[:, : p.n_tokens], p.position_ids(), p.decode_steps, p.chunk_tokens, scratch,
                  p.lead_tokens)


def run_passes(artifact: Path, device: torch.device, ids: torch.Tensor, passes, *, placement=None,
               scratch: Path | None = None, progress=None) -> list[torch.Tensor]:
    from ropeconv.device.memory import release
    from ropeconv.parity.probe import run_each

    model = load(artifact, device, placement, scratch, progress or (lambda _: None))
    try:
        return run_each(passes, lambda p: pass_logits(model, ids, p, scratch), progress)
    finally:
        model = None
        release()


class TransformersRuntime(RuntimeBase):
    """The transformers candidate: placed by accelerate like the reference; parity runs it in 4.x as well (the
    two majors read config.json differently)."""

    name = NAME
    runs_tf4_too = True

    def require(self) -> None:
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise InputError("the transformers runtime needs transformers: pip install transformers") from None

    def load(self, artifact, device, *, target=None, n_ctx=0, placement=None, scratch=None,
             progress=lambda _: None):
        return load(artifact, device, placement, scratch, progress)

    def logits(self, loaded, input_ids, position_ids, *, decode_steps=0, chunk_tokens=0, lead_tokens=0,
               scratch=None):
        return logits(loaded, input_ids, position_ids, decode_steps, chunk_tokens, scratch, lead_tokens)

    def close(self, loaded) -> None:
        from ropeconv.device.memory import free

        free(loaded)

    def run_passes(self, artifact, device, ids, passes, *, target=None, placement=None, scratch=None,
                   progress=None):
        return run_passes(artifact, device, ids, passes, placement=placement, scratch=scratch, progress=progress)


RUNTIME = TransformersRuntime()
