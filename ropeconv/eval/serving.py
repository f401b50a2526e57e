"""Serving engines as eval runtimes: an engine that runs another format's artifact (vLLM serves the safetensors
folder) is a `--runtime` choice of `ropeconv eval` (passkey, ppl, ruler) beside the formats' own runtimes
(formats.Format.eval). One record per engine: its eval spec (the choice, where the artifact lies, the adapter), the
name reports give it, and the check that it can run here. `--runtime auto` never picks one: it is asked for by name.

Adding a serving engine is one record here and its adapter module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ropeconv.formats.base import EvalSpec, Ref
from ropeconv.formats.safetensors import eval_artifact as safetensors_folder


@dataclass(frozen=True)
class ServingEngine:
    spec: EvalSpec
    runtime: str  # as results and reports name it
    require: Callable[[], None]  # InputError (one line, the install hint) when it cannot run here


def _require_vllm() -> None:
    from ropeconv.errors import InputError
    from ropeconv.parity import vllm

    if vllm.python() is None:
        raise InputError(f"{vllm.missing_note()}; --runtime vllm needs it")


SERVING: dict[str, ServingEngine] = {
    "vllm": ServingEngine(
        EvalSpec("vllm", 10, "config.json with safetensors weights (served by vLLM)", safetensors_folder,
                 Ref("ropeconv.eval.vllm_runtime:VllmEvalRuntime")),
        "vLLM", _require_vllm),
}
