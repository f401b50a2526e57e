"""Reading a base checkpoint into an index: config, position scheme and tensor locations, no tensor bytes."""

from ropeconv.checkpoint.hf import Checkpoint, load_checkpoint
from ropeconv.checkpoint.safetensors_header import TensorEntry

__all__ = ["Checkpoint", "TensorEntry", "load_checkpoint"]
