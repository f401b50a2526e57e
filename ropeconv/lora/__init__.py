"""LoRA adapters (PEFT's on-disk format) merged into the base while its tensors stream: read and check
them against the checkpoint (adapter.py), merge one tensor at a time (merge.py), and hand the merged
tensors to every exporter through a TensorSource (source.py). peft is not needed at run time."""

from ropeconv.lora.adapter import Adapter, read_adapter
from ropeconv.lora.merge import LoraMerge, plan_merge
from ropeconv.lora.source import MergedSource

__all__ = ["Adapter", "LoraMerge", "MergedSource", "plan_merge", "read_adapter"]
