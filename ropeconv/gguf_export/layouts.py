"""How each HuggingFace family is laid out in llama.cpp's GGUF: the lookup and the checks the converter runs.

The layouts are data in the family files (ropeconv/families/<model_type>.py: a GgufLayout, the GGUF
architecture's GgufArchSpec, and the config switches llama.cpp's graph does not compute). Tensor names come from
gguf-py's own TensorNameMap for the GGUF architecture; a layout holds only what the name map cannot: the
hyperparameter keys the llama.cpp loader reads, and the few tensor rewrites its compute graph needs, as flags the
converter (convert.py) applies: permute_qk (llama's interleaved rope pairs), qkv_per_head (gptneox/bloom's fused
qkv regrouped), norm_plus_one (gemma's 1 + w), conv1d (gpt2's [in, out] weights). Facts from the llama.cpp that
llama-cpp-python vendors (src/models/<arch>.cpp and the matching conversion/<family>.py), given per family in its
file.
"""

from __future__ import annotations

from typing import Any

from ropeconv.errors import UnsupportedError
from ropeconv.families import GGUF_CHECKS, NO_GGUF
from ropeconv.families import GGUF_LAYOUTS as LAYOUTS
from ropeconv.families.parts import EXPERT_KEYS, HEAD_KEYS, HIDDEN_KEYS, LAYER_KEYS  # noqa: F401  (converter's keys)
from ropeconv.families.spec import Config, GgufLayout, Hparam, first  # noqa: F401

__all__ = ["LAYOUTS", "NO_GGUF", "GgufLayout", "Hparam", "check_graph", "first", "arch_by_name", "layout_for", "model_arch"]


def arch_by_name(name: str) -> Any:
    """gguf-py's MODEL_ARCH for a GGUF architecture name (general.architecture), or None when it has none."""
    from ropeconv.gguf_io import tables

    return next((arch for arch, arch_name in tables.constants().MODEL_ARCH_NAMES.items() if arch_name == name), None)


def model_arch(layout: GgufLayout) -> Any:
    """gguf-py's MODEL_ARCH for the layout's architecture name (its tensor name map is keyed by it)."""
    arch = arch_by_name(layout.arch)
    if arch is None:
        raise UnsupportedError(f"{layout.model_type}: the installed gguf-py has no GGUF architecture "
                               f"{layout.arch!r}; use --to safetensors")
    return arch


def layout_for(model_type: str) -> GgufLayout:
    if model_type in NO_GGUF:
        raise UnsupportedError(f"{model_type} cannot be written as GGUF: {NO_GGUF[model_type]}")
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise UnsupportedError(
            f"{model_type} cannot be written as GGUF yet (supported: {', '.join(sorted(LAYOUTS))}); use --to safetensors"
        ) from None


def check_graph(layout: GgufLayout, config: Config, head_dim: int, target_ctx: int) -> None:
    """Refuse configs whose transformers forward pass llama.cpp's graph for the arch does not compute. config: with
    the family's class defaults (families.spec.with_class_defaults), as the GGUF plan reads it."""
    key = next((k for k in layout.act_keys if config.get(k)), layout.act_keys[0])
    act = config.get(key) or layout.activation[0]
    if act not in layout.activation:
        raise UnsupportedError(f"{layout.model_type} with {key} {act!r}: llama.cpp's {layout.arch} "
                               f"graph computes {layout.activation[0]}; use --to safetensors")
    window = config.get("sliding_window")
    if layout.no_sliding_window and config.get("use_sliding_window", True) and isinstance(window, int) \
            and window < target_ctx:
        raise UnsupportedError(
            f"{layout.model_type} attends through a sliding window of {window} tokens in transformers, and "
            f"llama.cpp's graph for it has none, so beyond {window} tokens the GGUF would compute another model; "
            "use --to safetensors"
        )
    for refusal in GGUF_CHECKS.get(layout.model_type, ()):  # the family file's gguf_checks
        reason = refusal(config, head_dim)
        if reason:
            raise UnsupportedError(f"{layout.model_type} with {reason}; use --to safetensors")
    if layout.output_is_embedding and not config["tie_word_embeddings"]:
        raise UnsupportedError(f"{layout.model_type} with untied lm_head: llama.cpp always uses the token embedding "
                               "as the output matrix; use --to safetensors")

