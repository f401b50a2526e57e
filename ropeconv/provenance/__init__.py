"""What every file ropeconv writes records about itself: the plan, its base and the writer's version.

GGUF metadata and ONNX metadata_props carry these `ropeconv.*` keys as strings (llama.cpp and onnxruntime
ignore them), so `ropeconv verify` and `ropeconv inspect` need no sidecar. This package sits below every
writer and reader of them: the exporters, the extend flows, verify and inspect take the keys from here.
Reading them back out of a GGUF is provenance.gguf (it needs gguf-py; this module does not).
"""

from __future__ import annotations

from pathlib import Path

import ropeconv
from ropeconv import jsontext
from ropeconv.errors import DamagedPlan, InputError
from ropeconv.positions import PositionPlan, plan_from_json

PLAN_KEY = "ropeconv.plan"  # the position plan, as JSON
BASE_KEY = "ropeconv.base_path"  # the base it was made from (resolved path)
HUB_KEY = "ropeconv.base_hub"  # GGUF from a Hub id: the repo, revision asked, commit fetched and file, as JSON
VERSION_KEY = "ropeconv.version"
LORA_KEY = "ropeconv.lora"  # GGUF: the adapters merged (path, sha256), so verify can merge them again
DTYPE_KEY = "ropeconv.dtype"  # ONNX: fp32, fp16 or int4
ATTENTION_KEY = "ropeconv.attention"  # ONNX: which attention operators the graph uses


def provenance(plan: PositionPlan, base: Path) -> dict[str, str]:
    """The keys every file ropeconv writes carries: the plan, its base, the writer's version."""
    return {
        PLAN_KEY: jsontext.dumps(plan.to_json(), PLAN_KEY, sort_keys=True),
        BASE_KEY: str(Path(base).resolve()),
        VERSION_KEY: ropeconv.__version__,
    }


def plan_in(props: dict[str, str], path: Path) -> PositionPlan | None:
    """The plan string metadata (an ONNX model's metadata_props) carry; None when they carry none, DamagedPlan
    when it cannot be read back."""
    if PLAN_KEY not in props:
        return None
    try:
        return plan_from_json(jsontext.loads(props[PLAN_KEY], PLAN_KEY))
    except (InputError, ValueError) as exc:
        raise DamagedPlan(f"{path}: {PLAN_KEY} is damaged ({exc})") from None
