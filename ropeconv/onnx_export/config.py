"""config.json read as transformers' config class reads it, for the keys the ONNX graph is planned from — without
importing transformers (0.6 s) and the torch its configuration_utils pulls in (1 s), so that `extend --dry-run --to
onnx` starts as fast as the other dry runs.

An attribute is config.json's key; else a dimension the family's shapes resolve under transformers' name (GPT-2's
n_embd as hidden_size: its attribute_map); else the class default the family's Family.config_defaults states, a
value or a function of this view (what the class's __post_init__ derives, as Qwen2's layer_types from
use_sliding_window and max_window_layers; a key present as null is derived too, as there); else there is no such
attribute, as on transformers' object. tests/families/test_config_defaults.py plans every family from this view and from
transformers' own config object, over configs that omit every optional key, and requires the same plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ropeconv.checkpoint.shapes import resolve_dims
from ropeconv.families import FAMILIES
from ropeconv.families.spec import class_defaults

# transformers' attribute names → the dimension names of the families' shapes tables (families/parts.py)
DIMENSIONS = {"hidden_size": "hidden", "num_hidden_layers": "layers", "num_attention_heads": "heads",
              "num_key_value_heads": "kv_heads", "vocab_size": "vocab", "word_embed_proj_dim": "proj"}


class ConfigView:
    __slots__ = ("_config", "_dims", "_defaults")

    def __init__(self, config: Mapping[str, Any], dims: Mapping[str, int] | None = None,
                 defaults: Mapping[str, Any] | None = None):
        self._config = config
        self._dims = dims or {}
        self._defaults = defaults or {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        config, defaults = self._config, self._defaults
        if name in config and not (config[name] is None and callable(defaults.get(name))):
            value = config[name]
        elif name in DIMENSIONS and DIMENSIONS[name] in self._dims:
            value = self._dims[DIMENSIONS[name]]
        elif name in defaults:
            value = defaults[name](self) if callable(defaults[name]) else defaults[name]
        else:
            raise AttributeError(name)
        return ConfigView(value) if isinstance(value, dict) else value  # MPT's attn_config, read by attribute

    def to_dict(self) -> dict[str, Any]:
        return dict(self._config)


def config_view(ckpt: Any, layout: Any) -> ConfigView:
    """ckpt: a Checkpoint; layout: its family's OnnxLayout."""
    family = FAMILIES[layout.model_type]
    dims, _ = resolve_dims(ckpt.config, family.shapes)
    return ConfigView(ckpt.config, dims, class_defaults(family))
