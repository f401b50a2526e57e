"""A GGUF vocabulary (the tokenizer.ggml.* arrays) as llama.cpp's loader and transformers' GGUF reader take it.

llama.cpp (src/llama-vocab.cpp) maps each token's text to its id and aborts the process when a text repeats
(GGML_ASSERT(id_to_token.size() == token_to_id.size())); it indexes token_type (as int32) and scores (as float32)
by token id, and refuses a file whose arrays are shorter. GGUF strings are UTF-8 (transformers decodes them
strictly: a token that is not, e.g. a lone surrogate's bytes, makes the whole file unreadable to it), and a merge is
two tokens of the vocabulary joined by one space. A GGUF base is checked here before anything is written; a
vocabulary converted from a tokenizer.json is held to the same token rule.
"""

from __future__ import annotations

from collections.abc import Sequence

from ropeconv.errors import InputError
from ropeconv.gguf_io.reader import GgufFile
from ropeconv.gguf_io.types import GGUFValueType

TOKENS = "tokenizer.ggml.tokens"
PER_TOKEN = {"tokenizer.ggml.token_type": GGUFValueType.INT32, "tokenizer.ggml.scores": GGUFValueType.FLOAT32}
MERGES = "tokenizer.ggml.merges"


def check_tokens(tokens: Sequence[str], where: str) -> None:
    """Each token UTF-8 text and present once; `where` names the vocabulary ("FILE: tokenizer.ggml.tokens")."""
    seen: dict[str, int] = {}
    for i, token in enumerate(tokens):
        _utf8(token, f"{where}[{i}]")
        if not token:
            continue  # llama.cpp names an empty token [EMPTY_i]
        first = seen.setdefault(token, i)
        if first != i:
            raise InputError(f"{where}: {token[:40]!r} is both token {first} and token {i}; llama.cpp aborts "
                             "loading a vocabulary whose tokens repeat")


def check_vocabulary(src: GgufFile) -> None:
    """A GGUF's own tokenizer arrays (a GGUF base's, copied unchanged into the output)."""
    field = src.field(TOKENS)
    if field is None:
        return
    _array_of(src, field, GGUFValueType.STRING)
    tokens = field.value
    check_tokens(tokens, f"{src.path}: {TOKENS}")
    for key, item_type in PER_TOKEN.items():
        per_token = src.field(key)
        if per_token is None:
            continue
        _array_of(src, per_token, item_type)
        if per_token.count != len(tokens):
            raise InputError(f"{src.path}: {key} has {per_token.count} entries for {len(tokens)} tokens; llama.cpp "
                             "reads one per token")
    merges = src.field(MERGES)
    if merges is not None:
        _array_of(src, merges, GGUFValueType.STRING)
        known = set(tokens)
        for i, merge in enumerate(merges.value):
            _utf8(merge, f"{src.path}: {MERGES}[{i}]")
            first, space, second = merge.partition(" ")
            if not (space and first and second and " " not in second and first in known and second in known):
                raise InputError(f"{src.path}: {MERGES}[{i}] {merge[:60]!r} is not two tokens of the vocabulary "
                                 "separated by one space")


def _array_of(src: GgufFile, field, item_type: GGUFValueType) -> None:
    if field.value_type != GGUFValueType.ARRAY or field.item_type != item_type:
        array = field.value_type == GGUFValueType.ARRAY
        got = f"an array of {field.item_type.name}" if array else field.value_type.name
        raise InputError(f"{src.path}: {field.key} is {got}; llama.cpp reads an array of {item_type.name}")


def _utf8(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # the reader's surrogateescape kept bytes that are not UTF-8 (\udcXX each)
        raise InputError(f"{where} {text[:40]!r} is not UTF-8 text (GGUF strings are; transformers cannot read "
                         "this vocabulary)") from None
