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


TOKENIZER_CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 12:45 and 3.14159 is pi.",
    "Context windows grow with rotary position interpolation, NTK, YaRN and LongRoPE.",
    "naïve café,東京, emoji 🚀 — and code: def f(x):\n    return x * 2  # done",
]


def add_byte_level_tokenizer(model_dir: Path, vocab_size: int = 400) -> Path:
    """A small byte-level BPE tokenizer (GPT-2 style pre-tokenizer) trained here, saved beside config.json.
    Ids 0–2 are <unk>, <s>, </s> to match the tiny configs' bos/eos ids; <|endoftext|> is there because
    llama.cpp's loader looks it up in any model whose name contains "phi3"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TOKENIZER_CORPUS * 4, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>") \
        .save_pretrained(model_dir)
    return model_dir
