"""The one interface of a runtime — an engine that loads an artifact from disk and runs it as its users would —
and the defaults of its optional parts.

Parity (`ropeconv.parity._judge`), eval (`ropeconv.eval.runtimes`) and search reach transformers, llama.cpp and
onnxruntime only through this interface. What differs per engine is declared by its runtime (a flag or a method
below), never tested by the runtime's name, so a new engine is one module that fills in the same record.

Each runtime module (hf.py, llamacpp.py, ort.py) defines RUNTIME, an instance of a RuntimeBase subclass; the
format registry names the module (formats.Format.runtime_module) and `runtime_for` returns its RUNTIME. The
module-level functions of those modules stay the engines' own API (tests and benchmarks call them).

Logits are [n_tokens, vocab] float32 on the CPU, row i for input_ids[0, i] placed at position_ids[0, i].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from ropeconv.device.placement import Placement
    from ropeconv.parity.probe import Pass

Progress = Callable[[str], None]


def _silent(_: str) -> None:
    pass


@runtime_checkable
class Runtime(Protocol):
    """What parity, eval and search use of a runtime. `target` is a place within the device the engine runs on,
    where an engine has several (onnxruntime's execution providers: "cpu", "cuda"); None where it has one."""

    name: str  # as reports and eval results name it ("transformers", "llama.cpp", "onnxruntime"): Format.runtime
    # the engine's rope error per position (float32 angles built by repeated multiplication): the strict tolerance
    # is widened to position_noise × last position where that is larger
    position_noise: float
    runs_tf4_too: bool  # parity also runs the artifact in transformers 4.x when that environment is at hand
    supports_decode_steps: bool  # a pass's decode steps run one token per call (False: prefilled with the rest)
    micro_batch_tokens: int  # the engine splits each call into micro-batches of this many tokens (0: it does not)

    def require(self) -> None:
        """InputError, with the install hint, when the engine's package is missing."""
        ...

    def targets(self, device: torch.device, artifact: Path | None = None) -> tuple[str | None, ...]:
        """Where a parity check runs the artifact on this device, each in turn (the last: the fastest)."""
        ...

    def load(self, artifact: Path, device: torch.device, *, target: str | None = None, n_ctx: int = 0,
             placement: Placement | None = None, scratch: Path | None = None, progress: Progress = _silent) -> Any:
        """The artifact loaded, with room for n_ctx tokens where the engine sizes its KV cache up front."""
        ...

    def logits(self, loaded: Any, input_ids: torch.Tensor, position_ids: torch.Tensor, *, decode_steps: int = 0,
               chunk_tokens: int = 0, lead_tokens: int = 0, scratch: Path | None = None) -> torch.Tensor:
        """Logits of input_ids [1, n] at position_ids [1, n] through the KV cache: the prefill (in calls of
        chunk_tokens when given, the first of lead_tokens when longer), then the last decode_steps tokens one per
        call (where supports_decode_steps). scratch: where rows too large for memory are stored."""
        ...

    def close(self, loaded: Any) -> None:
        """Give back what load took (a context, a session; a model's memory)."""
        ...

    def run_passes(self, artifact: Path, device: torch.device, ids: torch.Tensor, passes: Sequence[Pass], *,
                   target: str | None = None, placement: Placement | None = None, scratch: Path | None = None,
                   progress: Progress | None = None) -> list[torch.Tensor]:
        """Logits per probe pass (ropeconv.parity.probe.Pass), ids[:, :pass.n_tokens] at the pass's positions."""
        ...

    def row_prefix(self, target: str | None) -> str:
        """How the report marks the rows of a run on this target ("cuda-"); "" for the default one."""
        ...

    def ran_on(self, device: torch.device, targets: Sequence[str | None]) -> str:
        """What the report says the artifact ran on."""
        ...

    def fallback_notes(self, device: torch.device, artifact: Path, targets: Sequence[str | None]) -> tuple[str, ...]:
        """Notes for the report when the engine ran somewhere other than the device asked for (and why)."""
        ...


class RuntimeBase:
    """The defaults: one target, no fallback, the pass contract through load/logits/close."""

    name = ""
    position_noise = 0.0
    runs_tf4_too = False
    supports_decode_steps = True
    micro_batch_tokens = 0

    def require(self) -> None:
        pass

    def targets(self, device: torch.device, artifact: Path | None = None) -> tuple[str | None, ...]:
        return (None,)

    def load(self, artifact: Path, device: torch.device, *, target: str | None = None, n_ctx: int = 0,
             placement: Placement | None = None, scratch: Path | None = None, progress: Progress = _silent) -> Any:
        raise NotImplementedError

    def logits(self, loaded: Any, input_ids: torch.Tensor, position_ids: torch.Tensor, *, decode_steps: int = 0,
               chunk_tokens: int = 0, lead_tokens: int = 0, scratch: Path | None = None) -> torch.Tensor:
        raise NotImplementedError

    def close(self, loaded: Any) -> None:
        pass

    def run_passes(self, artifact: Path, device: torch.device, ids: torch.Tensor, passes: Sequence[Pass], *,
                   target: str | None = None, placement: Placement | None = None, scratch: Path | None = None,
                   progress: Progress | None = None) -> list[torch.Tensor]:
        """One load holding the longest pass, each pass through logits, then close."""
        from ropeconv.parity.probe import run_each

        loaded = self.load(artifact, device, target=target, n_ctx=max(p.n_tokens for p in passes),
                           placement=placement, scratch=scratch, progress=progress or _silent)
        try:
            return run_each(passes, lambda p: self.logits(
                loaded, ids[:, : p.n_tokens], p.position_ids(), decode_steps=p.decode_steps,
                chunk_tokens=p.chunk_tokens, lead_tokens=p.lead_tokens, scratch=scratch), progress)
        finally:
            self.close(loaded)

    def row_prefix(self, target: str | None) -> str:
        return ""

    def ran_on(self, device: torch.device, targets: Sequence[str | None]) -> str:
        return device.type

    def fallback_notes(self, device: torch.device, artifact: Path, targets: Sequence[str | None]) -> tuple[str, ...]:
        return ()
