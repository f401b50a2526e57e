"""Reading a gemma3 GGUF back into transformers the way llama.cpp's gemma3 graph reads it. The family record (layout,
hyperparameters, GGUF refusals, and the llama.cpp facts they rest on) is ropeconv/families/gemma3_text.py."""

from __future__ import annotations


def fix_transformers_config(src, config) -> None:
    """transformers' reading of a gemma3 GGUF (integrations/ggml.py) maps none of the keys that place and rotate the
    sliding layers, nor the query scale, and takes its config defaults (sliding base 10000, every 6th layer full,
    query_pre_attn_scalar 256): set them to what llama.cpp computes from the same file, so that the reference built
    from the GGUF is the model llama.cpp runs."""
    arch = "gemma3"
    layers = int(config.num_hidden_layers)
    pattern = src.value(f"{arch}.attention.sliding_window_pattern", 6)
    window = src.value(f"{arch}.attention.sliding_window")
    if isinstance(pattern, list):
        sliding = [bool(x) for x in pattern][:layers]
    else:
        sliding = [window is not None and (pattern == 0 or il % pattern < pattern - 1) for il in range(layers)]
    config.layer_types = ["sliding_attention" if s else "full_attention" for s in sliding]
    rope = dict(config.rope_parameters or {})
    rope["sliding_attention"] = {"rope_type": "default",
                                 "rope_theta": float(src.value(f"{arch}.rope.freq_base_swa", 10000.0))}
    config.rope_parameters = rope
    head_dim = int(src.value(f"{arch}.attention.key_length", getattr(config, "head_dim", 256)))
    config.query_pre_attn_scalar = config.hidden_size // config.num_attention_heads if layers == 62 else head_dim
