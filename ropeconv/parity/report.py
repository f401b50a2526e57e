"""Compare candidate logits with reference logits, band by band of position."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ropeconv.parity.probe import Pass

if TYPE_CHECKING:
    import torch


COMPARE_ROWS = 256  # rows of logits compared at a time


@dataclass(frozen=True)
class Tolerance:
    # Both sides run fp32. The runtime's own float32 inv_freq is a few ulp (~1e-7 relative) off the
    # exact value, so rope angles drift by ≈ position × 1e-7 rad: measured max|Δlogit| 1.1e-3 on
    # SmolLM2 at positions 7.7k–8.7k, ~4e-3 expected at 32k. A YaRN attention factor off by only
    # 0.1% already moves logits by 2e-2 (tiny model) to 1e-1 (SmolLM2); 1e-2 sits between the two.
    max_abs_logit: float = 1e-2
    min_top1: float = 0.99
    # A quantized GGUF run as is (llama.cpp rounds activations to 8 bits for quantized matmuls):
    # measured on SmolLM2 Q4_1 with the right rope, mean KL 5e-3–8e-3 and top-1 87–91%; a missing
    # or wrong scaling gives KL ≥ 0.13 and top-1 ≤ 59%. Catches gross errors only; the float32 twin
    # is what proves the metadata exactly.
    quantized_max_kl: float = 2e-2
    quantized_min_top1: float = 0.80


@dataclass(frozen=True)
class Band:
    pass_name: str
    first_position: int
    last_position: int
    tokens: int
    max_abs_logit: float
    mean_kl: float
    top1: float
    quantized: bool = False  # judged by the quantized gate, not the strict one
    # the runtime's own float32 rope error grows with position (see runtimes: POSITION_NOISE)
    position_noise: float = 0.0

    def allowed_max_abs(self, tol: Tolerance) -> float:
        return max(tol.max_abs_logit, self.position_noise * self.last_position)

    def within(self, tol: Tolerance) -> bool:
        if self.quantized:
            return self.mean_kl <= tol.quantized_max_kl and self.top1 >= tol.quantized_min_top1
        return self.max_abs_logit <= self.allowed_max_abs(tol) and self.top1 >= tol.min_top1


@dataclass(frozen=True)
class ParityReport:
    runtime: str
    device: str
    tokens: int
    original_ctx: int
    first_position: int
    last_position: int
    bands: tuple[Band, ...]
    tolerance: Tolerance
    notes: tuple[str, ...] = field(default_factory=tuple)
    ran: tuple[str, ...] = ()  # the runtime versions that ran the artifact (transformers: 5.x, and 4.x when present)

    @property
    def max_abs_logit(self) -> float:
        """Over the strictly judged bands (a quantized run's max is noise, see Tolerance)."""
        return max((b.max_abs_logit for b in self.bands if not b.quantized), default=0.0)

    @property
    def top1(self) -> float:
        return min((b.top1 for b in self.bands if not b.quantized), default=1.0)

    @property
    def passed(self) -> bool:
        return all(b.within(self.tolerance) for b in self.bands)

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(passed=self.passed, max_abs_logit=self.max_abs_logit, top1=self.top1)
        out["bands"] = [asdict(b) for b in self.bands]
        out["tolerance"] = asdict(self.tolerance)
        out["notes"] = list(self.notes)
        return out

    def card_summary(self) -> dict:
        """The run-independent part, for files that must be byte-identical across runs."""
        return {
            "passed": self.passed,
            "runtime": self.runtime,
            "device": self.device,
            "tokens": self.tokens,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "tolerance": asdict(self.tolerance),
            **({"ran": list(self.ran)} if self.ran else {}),
            # the figures the card quotes, to two significant digits (rounded up: a bound, and the last bits of a
            # float32 run do not reach the file)
            "max_abs_logit": bound(self.max_abs_logit),
            "top1": math.floor(self.top1 * 1e4) / 1e4,
            **self._quantized_figures(),
        }

    def _quantized_figures(self) -> dict:
        """A quantized artifact's own rows (the strict figures above are its float32 twin's)."""
        rows = [b for b in self.bands if b.quantized]
        if not rows:
            return {}
        return {"quantized_mean_kl": bound(max(b.mean_kl for b in rows)),
                "quantized_top1": math.floor(min(b.top1 for b in rows) * 1e4) / 1e4}

    def failed_in(self) -> str:
        """Where the failing rows ran: e.g. "transformers 4.57.6" when only the 4.x rows failed."""
        from ropeconv.parity.tf4 import PREFIX

        failing = [b for b in self.bands if not b.within(self.tolerance)]
        if failing and len(self.ran) > 1 and all(b.pass_name.startswith(PREFIX) for b in failing):
            return self.ran[-1]
        if failing and len(self.ran) > 1 and not any(b.pass_name.startswith(PREFIX) for b in failing):
            return self.ran[0]
        return self.runtime

    def format(self) -> str:
        w = max([6] + [len(b.pass_name) for b in self.bands])
        lines = [
            f"parity {'PASSED' if self.passed else 'FAILED'}: {self.runtime} on {self.device} vs reference, "
            f"{self.tokens} tokens, original context {self.original_ctx}",
            *([f"  ran: {', '.join(self.ran)}"] if self.ran else []),
            f"  {'pass':<{w}} {'positions':>15} {'tokens':>7} {'max|Δlogit|':>12} {'mean KL':>10} {'top-1':>7}",
        ]
        for b in self.bands:
            span = f"{b.first_position}–{b.last_position}"
            lines.append(
                f"  {b.pass_name:<{w}} {span:>15} {b.tokens:>7} {b.max_abs_logit:>12.3e} {b.mean_kl:>10.2e} "
                f"{b.top1:>7.2%}"
            )
        noise = max((b.position_noise for b in self.bands), default=0.0)
        lines.append(
            f"  tolerance: max|Δlogit| ≤ {self.tolerance.max_abs_logit:g}"
            + (f" or {noise:g} × last position (runtime rope noise)" if noise else "")
            + f", top-1 ≥ {self.tolerance.min_top1:.0%}"
        )
        if any(b.quantized for b in self.bands):
            lines.append(
                f"  quantized rows (q-): mean KL ≤ {self.tolerance.quantized_max_kl:g}, top-1 ≥ "
                f"{self.tolerance.quantized_min_top1:.0%} (gross errors only)"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def bound(value: float) -> float:
    """value rounded up to two significant digits (0 and non-finite values as they are)."""
    if value <= 0 or not math.isfinite(value):
        return value
    scale = 10.0 ** (math.floor(math.log10(value)) - 1)
    return float(f"{math.ceil(round(value / scale, 9)) * scale:.2g}")


def band_edges(original_ctx: int, first: int, last: int) -> list[tuple[int, int]]:
    """[0, L), [L, 2L), [2L, 4L), … clipped to the pass's positions."""
    edges = [0, original_ctx]
    while edges[-1] <= last:
        edges.append(edges[-1] * 2)
    spans = []
    for lo, hi in zip(edges, edges[1:]):
        lo, hi = max(lo, first), min(hi - 1, last)
        if lo <= hi:
            spans.append((lo, hi))
    return spans


def compare(pass_: Pass, reference: torch.Tensor, candidate: torch.Tensor, original_ctx: int,
            quantized: bool = False, position_noise: float = 0.0, prefix: str = "") -> list[Band]:
    """reference/candidate: [n_tokens, vocab] logits for the pass; prefix marks the rows of another provider."""
    import torch

    n = pass_.n_tokens
    abs_diff, kl, agree = (torch.empty(n, dtype=torch.float64) for _ in range(3))
    for a in range(0, n, COMPARE_ROWS):  # a block of rows at a time: a full-length probe's logits are GBs
        ref, cand = reference[a : a + COMPARE_ROWS].double(), candidate[a : a + COMPARE_ROWS].double()
        abs_diff[a : a + len(ref)] = (ref - cand).abs().amax(dim=-1)
        ref_logp, cand_logp = ref.log_softmax(-1), cand.log_softmax(-1)
        kl[a : a + len(ref)] = (ref_logp.exp() * (ref_logp - cand_logp)).sum(-1)
        agree[a : a + len(ref)] = (ref.argmax(-1) == cand.argmax(-1)).double()
    bands = []
    for lo, hi in band_edges(original_ctx, pass_.first_position, pass_.last_position):
        sl = slice(lo - pass_.first_position, hi - pass_.first_position + 1)
        bands.append(
            Band(
                pass_name=prefix + ("q-" if quantized else "") + pass_.name,
                first_position=lo,
                last_position=hi,
                tokens=hi - lo + 1,
                max_abs_logit=float(abs_diff[sl].max()),
                mean_kl=float(kl[sl].mean()),
                top1=float(agree[sl].mean()),
                quantized=quantized,
                position_noise=position_noise,
            )
        )
    return bands
