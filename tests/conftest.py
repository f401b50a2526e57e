"""Tiny random checkpoints built from configs in temp dirs (no downloads), and CLI helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ropeconv.cli.main import main

ORIGINAL_CTX = 64

# Per-family tiny configs. initializer_range is large so logits have unit scale and a wrong rope
# visibly moves them; token ids are kept inside the small vocabulary.
TINY = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                    sliding_window=None),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),
    "phi3": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 original_max_position_embeddings=ORIGINAL_CTX, pad_token_id=0),
    "gpt_neox": dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, rotary_pct=0.25),
    "gemma": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "gemma2": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   sliding_window=4096, query_pre_attn_scalar=16),
}


def make_tiny(root: Path, model_type: str = "llama", *, name: str | None = None, max_shard_size: str | None = None,
              **overrides) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(
        vocab_size=512,
        num_hidden_layers=2,
        max_position_embeddings=ORIGINAL_CTX,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    kwargs.update(TINY[model_type])
    kwargs.update(overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    out = root / (name or f"tiny-{model_type}")
    save_kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **save_kwargs)
    return out


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("base"), "llama")



def add_byte_level_tokenizer(model_dir: Path) -> Path:
    from ropeconv.fixtures.tokenizers import add_byte_level_bpe

    return add_byte_level_bpe(model_dir)
