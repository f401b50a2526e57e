"""The search's fitness: perplexity of the base model with a candidate plan installed, in transformers.

    PPL = exp( mean over windows w of  −(1/|w|) Σ_{i∈w} log p(x_i | x_<i) )

Each window is the first `length` tokens of a consecutive slice of the calibration text (a BOS in front when the
tokenizer adds one: ropeconv.eval.ppl's single-pass protocol, LongRoPE's --truncate), so `length` positions are
scored with the plan as transformers evaluates it at that length (the long factors beyond the original context).

The model is loaded once through ropeconv.parity.reference.load_reference (the parity reference: base weights,
rotary modules computing the plan) and each candidate only swaps those modules' plan: no weights are reloaded.
Log-probabilities come from the decoder's hidden states through the output head a chunk of rows at a time, so
memory grows with length × hidden size, not length × vocabulary.

A candidate whose perplexity is not a finite number (NaN or infinite logits, or exp(NLL) beyond float64) scores
evolution.WORST_FITNESS, the largest float64: ranked below every finite score, and a finite number in the cache,
the log and the factors file (its NLL is recorded as null).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from ropeconv.eval import ppl as ppl_mod
from ropeconv.positions import RopePlan
from ropeconv.search.evolution import WORST_FITNESS

HEAD_CHUNK_ROWS = 1024


@torch.no_grad()
def token_logprobs(model, ids: list[int], chunk: int = HEAD_CHUNK_ROWS) -> np.ndarray:
    """log p(ids[i] | ids[:i]) for i = 1 … n−1 at positions 0 … n−1, float64 — the same values as log_softmax of
    model(ids).logits (the test holds them equal), without the [n, vocab] logits tensor."""
    from ropeconv.device.placement import input_device

    device = input_device(model)  # under disk offload the first parameters sit on the meta device
    x = torch.tensor([ids], device=device)
    hidden = model.base_model(input_ids=x, position_ids=torch.arange(len(ids), device=device)[None],
                              use_cache=False).last_hidden_state[0, :-1]
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)  # gemma2: tanh-capped logits
    target = x[0, 1:]
    out = np.empty(len(ids) - 1, dtype=np.float64)
    for a in range(0, len(ids) - 1, chunk):
        logits = head(hidden[a : a + chunk]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
        out[a : a + chunk] = lp.gather(1, target[a : a + chunk, None].to(lp.device))[:, 0].cpu().numpy()
    return out


class Scorer:
    """One loaded model, many plans: perplexity of the text at a length under each plan."""

    def __init__(self, base: Path, first_plan: RopePlan, device: torch.device, text_ids: list[int],
                 bos_id: int | None, samples: int = 1, placement=None, progress=lambda _: None):
        """placement (ropeconv.device.placement): --max-memory caps; disk offload goes to a scratch folder of its
        own, removed by close()."""
        from ropeconv.device.placement import scratch_dir
        from ropeconv.parity.reference import load_reference

        self.text_ids, self.bos_id, self.samples = text_ids, bos_id, samples
        self.scratch = scratch_dir(placement) if placement is not None and placement.caps else None
        try:
            self.model: torch.nn.Module | None = load_reference(  # None once closed
                base, first_plan, device, placement=placement, scratch=self.scratch, progress=progress)
        except BaseException:
            self._remove_scratch()
            raise

    def perplexity(self, plan: RopePlan, length: int) -> dict:
        """{"ppl", "nll", "tokens", "seconds"} of `samples` consecutive windows of `length` tokens."""
        from ropeconv.parity.reference import install_plan_rotary

        model = self.model
        assert model is not None, "the scorer is closed"
        install_plan_rotary(model, plan)  # swaps the plan of the rotary modules load_reference installed
        width = ppl_mod.window_tokens(length, self.bos_id)
        start = time.monotonic()
        nlls, tokens = [], 0
        for k in range(self.samples):
            window = self.text_ids[k * width : (k + 1) * width]
            record = ppl_mod.perplexity(window, length, lambda ids: token_logprobs(model, ids), self.bos_id)
            nlls.append(record["nll"])
            tokens += record["tokens"]
        nll = float(np.mean(nlls))
        ppl = math.exp(nll) if nll < math.log(WORST_FITNESS) else math.inf  # a NaN nll too
        finite = math.isfinite(nll) and math.isfinite(ppl)
        return {"ppl": ppl if finite else WORST_FITNESS, "nll": nll if finite else None, "tokens": tokens,
                "seconds": round(time.monotonic() - start, 3)}

    def close(self) -> None:
        from ropeconv.device.memory import free

        model, self.model = self.model, None
        if model is not None:
            free(model)
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        import shutil

        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None
