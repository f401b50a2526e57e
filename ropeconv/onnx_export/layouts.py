"""How each HuggingFace decoder family computes its forward pass, as data the graph builder reads: an OnnxLayout
in each family file (ropeconv/families/<model_type>.py); this module holds the lookup and the activations.

The facts each family's layout encodes (from transformers' models/<family>/modeling_<family>.py) are in its
family file's docstring.

Biases are not listed: a linear layer has one exactly when its `.bias` tensor is in the checkpoint
(MPT aside, see linear_bias).
"""

from __future__ import annotations

from ropeconv.errors import UnsupportedError
from ropeconv.families import NO_ONNX
from ropeconv.families import ONNX_LAYOUTS as LAYOUTS
from ropeconv.families.spec import OnnxLayout

__all__ = ["ACTIVATIONS", "FIXED_ACTIVATIONS", "LAYOUTS", "OnnxLayout", "onnx_layout_for"]

# transformers' ACT2FN names → the composition the graph uses
ACTIVATIONS = {
    "silu": "silu", "swish": "silu",
    "gelu": "gelu_erf",
    "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "relu": "relu",
}  # fmt: skip
# hard-coded in a family's MLP (OnnxLayout.fixed_activation), never named by a config
FIXED_ACTIVATIONS = ("gelu_bloom", "gelu_erf")


def onnx_layout_for(model_type: str) -> OnnxLayout:
    if model_type in NO_ONNX:
        raise UnsupportedError(f"{model_type} cannot be written as ONNX: {NO_ONNX[model_type]}")
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise UnsupportedError(
            f"{model_type} cannot be written as ONNX yet (supported: {', '.join(sorted(LAYOUTS))}); "
            "use --to safetensors"
        ) from None
