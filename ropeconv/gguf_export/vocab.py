"""The base's tokenizer as llama.cpp's tokenizer.* keys, read with gguf-py's vocabulary helpers.

gguf-py gives the token list (BpeVocab for byte-level BPE, SentencePieceVocab for tokenizer.model,
LlamaHfVocab for a SentencePiece-style tokenizer.json) and the special tokens and chat template
(SpecialVocab). What it leaves to the converter is decided here:

- token types: a token the tokenizer marks special is CONTROL (llama.cpp then parses it as one
  piece and never prints it), another added token is USER_DEFINED, and rows of the embedding beyond
  the tokenizer are padding tokens of type UNUSED, so the token count equals the vocabulary rows as
  llama.cpp requires;
- `tokenizer.ggml.pre`: llama.cpp splits text with the regexes of a named pre-tokenizer
  (src/llama-vocab.cpp). The name is chosen by matching transformers' own pre_tokenizer in
  tokenizer.json against the regexes llama.cpp uses for each name; a pre-tokenizer matching none is
  refused, because llama.cpp would split text differently and tokenize silently otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ropeconv.checkpoint.tokenizer import TokenizerFiles, one_line
from ropeconv.errors import InputError, UnsupportedError
from ropeconv.gguf_io.fields import NewField
from ropeconv.gguf_io.types import GGUFValueType
from ropeconv.gguf_io.vocabulary import check_tokens

# transformers' ByteLevel(use_regex=True) splits with exactly GPT-2's regex
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# the regexes llama.cpp applies for these names, written as tokenizer.json writes them
SPLIT_REGEXES = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}


@dataclass(frozen=True)
class TokenizerKind:
    """What the GGUF's tokenizer.* keys will say of the base's tokenizer, decided without reading its tokens."""

    reader: str  # gguf-py's vocabulary class: "bpe" (byte-level BPE), "spm" (tokenizer.model), "hf" (tokenizer.json)
    model: str  # tokenizer.ggml.model
    pre: str | None  # tokenizer.ggml.pre


def tokenizer_kind(tok: TokenizerFiles) -> TokenizerKind:
    """The tokenizer's kind and llama.cpp pre-tokenizer, or the refusal a conversion would meet (a dry run's check:
    no token list)."""
    tok_json = tok.tokenizer_json
    if tok_json is not None and _is_byte_level(tok_json):
        _check_dense_ids(tok.path / "tokenizer.json", tok_json["model"].get("vocab"))
        return TokenizerKind("bpe", "gpt2", byte_level_pre(tok_json))
    if tok.sentencepiece:
        return TokenizerKind("spm", "llama", None)
    if tok_json is not None:
        return TokenizerKind("hf", "llama", None)
    raise InputError(f"{tok.path}: no tokenizer.json or tokenizer.model; llama.cpp needs the vocabulary in the "
                     "GGUF — put the base's tokenizer files beside config.json")


def _check_dense_ids(path: Path, vocab: Mapping[str, int]) -> None:
    """A GGUF holds one token per id, ids 0..N-1; the tokenizers library also takes a vocabulary with gaps or with
    two tokens on one id, which a GGUF cannot carry. A dry run reaches this with tokenizer.json parsed but not yet
    loaded by the tokenizers library, so the vocabulary's shape is checked here too."""
    if not isinstance(vocab, dict) or not all(type(i) is int for i in vocab.values()):
        raise InputError(f"{path}: model.vocab must be an object mapping each token to an integer id")
    owner: dict[int, str] = {}
    for token, token_id in vocab.items():
        if token_id in owner:
            raise UnsupportedError(f"{path}: model.vocab gives id {token_id} to both {owner[token_id][:40]!r} and "
                                   f"{token[:40]!r}; a GGUF vocabulary holds one token per id — use --to safetensors")
        owner[token_id] = token
    missing = next((i for i in range(len(vocab)) if i not in owner), None)
    if missing is not None:
        raise UnsupportedError(f"{path}: model.vocab has no token with id {missing} (its ids are not "
                               f"0..{len(vocab) - 1}); a GGUF vocabulary holds one token per id — use --to safetensors")


def tokenizer_fields(tok: TokenizerFiles, n_vocab: int) -> list[NewField]:
    # gguf-py's vocabulary readers: the conversion imports gguf-py here, not where a dry run plans
    from gguf import Keys, TokenType
    from gguf.vocab import BpeVocab, LlamaHfVocab, SentencePieceVocab, SpecialVocab

    special_keys = {"bos": Keys.Tokenizer.BOS_ID, "eos": Keys.Tokenizer.EOS_ID, "unk": Keys.Tokenizer.UNK_ID,
                    "sep": Keys.Tokenizer.SEP_ID, "pad": Keys.Tokenizer.PAD_ID}

    base, tok_json = tok.path, tok.tokenizer_json
    kind = tokenizer_kind(tok)
    model, pre = kind.model, kind.pre
    tokens, scores, types = [], [], []
    try:  # what the checks before leave to gguf-py's readers (e.g. added tokens off the ids after the vocabulary)
        readers: dict[str, type[BpeVocab] | type[SentencePieceVocab] | type[LlamaHfVocab]] = {
            "bpe": BpeVocab, "spm": SentencePieceVocab, "hf": LlamaHfVocab}
        vocab = readers[kind.reader](base)
        for text, score, token_type in vocab.all_tokens():
            tokens.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
            scores.append(float(score))
            types.append(int(token_type))
        special = SpecialVocab(base, load_merges=model == "gpt2", n_vocab=n_vocab)
    except GGUF_PY_ERRORS as exc:
        raise UnsupportedError(f"{base}: tokenizer not supported for GGUF ({one_line(exc)}); use --to safetensors") \
            from None
    if len(tokens) > n_vocab:
        raise InputError(f"{base}: the tokenizer has {len(tokens)} tokens but the model only {n_vocab} embedding rows")
    specials = _special_flags(tok_json)
    index = {t: i for i, t in enumerate(tokens)}
    for content, is_special in specials.items():
        i = index.get(content)
        if i is not None and types[i] in (TokenType.NORMAL, TokenType.CONTROL, TokenType.USER_DEFINED):
            types[i] = TokenType.CONTROL if is_special else TokenType.USER_DEFINED
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(TokenType.UNUSED)
    check_tokens(tokens, f"{base}: the GGUF vocabulary (tokenizer.ggml.tokens)")

    fields = [NewField("tokenizer.ggml.model", GGUFValueType.STRING, model)]
    if pre is not None:
        fields.append(NewField("tokenizer.ggml.pre", GGUFValueType.STRING, pre))
    if isinstance(vocab, SentencePieceVocab) and not _adds_dummy_prefix(base / "tokenizer.model"):
        # Gemma's: llama.cpp starts an SPM text with "▁" unless told otherwise (llama.cpp's converter writes the key
        # from the same proto field); absent, the default true is what Llama-style models need
        fields.append(NewField(Keys.Tokenizer.ADD_PREFIX, GGUFValueType.BOOL, False))
    fields += [
        NewField("tokenizer.ggml.tokens", GGUFValueType.ARRAY, tokens, GGUFValueType.STRING),
        NewField("tokenizer.ggml.scores", GGUFValueType.ARRAY, scores, GGUFValueType.FLOAT32),
        NewField("tokenizer.ggml.token_type", GGUFValueType.ARRAY, [int(t) for t in types], GGUFValueType.INT32),
    ]
    if special.merges:
        fields.append(NewField("tokenizer.ggml.merges", GGUFValueType.ARRAY, list(special.merges),
                               GGUFValueType.STRING))
    for which, key in special_keys.items():
        token_id = special.special_token_ids.get(which)
        if isinstance(token_id, int) and 0 <= token_id < n_vocab:
            fields.append(NewField(key, GGUFValueType.UINT32, token_id))
    for which, add in sorted(special.add_special_token.items()):
        add_key = {"bos": Keys.Tokenizer.ADD_BOS, "eos": Keys.Tokenizer.ADD_EOS}.get(which)
        if add_key:
            fields.append(NewField(add_key, GGUFValueType.BOOL, bool(add)))
    if isinstance(special.chat_template, str) and special.chat_template:
        fields.append(NewField(Keys.Tokenizer.CHAT_TEMPLATE, GGUFValueType.STRING, special.chat_template))
    return fields


def _adds_dummy_prefix(model_file: Path) -> bool:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # protobuf-generated, no stubs
    proto.ParseFromString(model_file.read_bytes())
    return bool(proto.normalizer_spec.add_dummy_prefix)


def byte_level_pre(tok_json: Mapping[str, Any]) -> str:
    """llama.cpp's pre-tokenizer name whose regexes equal this tokenizer.json's pre_tokenizer."""
    steps = _flatten(tok_json.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True)
            and not steps[1].get("add_prefix_space")):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True) and \
            steps[0].get("behavior") == "Isolated" and not steps[0].get("invert"):
        pattern = steps[0].get("pattern")
        regex = pattern.get("Regex") if isinstance(pattern, dict) else None
        name = SPLIT_REGEXES.get(regex) if isinstance(regex, str) else None
        if name:
            return name
    raise UnsupportedError(
        f"tokenizer.json's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) matches none that llama.cpp "
        "implements here (gpt-2, smollm, llama-bpe, qwen2); llama.cpp would split text differently — use --to "
        "safetensors"
    )


def _flatten(node: Any) -> list[dict[str, Any]]:
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        return [s for child in node.get("pretokenizers", []) for s in _flatten(child)]
    return [node]


def _is_byte_level(tok_json: Mapping[str, Any]) -> bool:
    model = tok_json.get("model") or {}
    decoder = tok_json.get("decoder") or {}
    if not isinstance(model, dict) or not isinstance(decoder, dict):
        return False
    return model.get("type") == "BPE" and not model.get("byte_fallback") and decoder.get("type") == "ByteLevel"


def _special_flags(tok_json: Mapping[str, Any] | None) -> dict[str, bool]:
    if not tok_json:
        return {}
    return {t["content"]: bool(t.get("special")) for t in tok_json.get("added_tokens") or []}


# what gguf-py's vocabulary readers raise on a tokenizer they cannot convert (a missing sentencepiece: RuntimeError)
GGUF_PY_ERRORS = (FileNotFoundError, ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError)


# llama.cpp's vocabulary loader (llama-vocab.cpp, "set attributes by model/tokenizer/architecture name") gives
# Phi-3's SentencePiece tokens their strip flags in any model whose general.name contains one of these, looking
# each token up by its text: a vocabulary without one of them (Phi-4's byte-level BPE has no <unk>, <s>, </s>)
# then fails to load with "unordered_map::at"
PHI3_NAMES = ("phi-3", "phi3")
PHI3_TOKENS = ("</s>", "<unk>", "<s>", "<|endoftext|>")


def needs_tokens(name: str) -> bool:
    """Whether general_name() must see the token list to decide about this name."""
    return any(n in name.lower() for n in PHI3_NAMES)


def general_name(name: str, explicit: bool, fields: list[NewField]) -> str:
    """general.name as llama.cpp can load it: a name llama.cpp would take for Phi-3's (when the vocabulary lacks
    the tokens that rule looks up) loses its hyphen-or-nothing between "phi" and "3", e.g. tiny-phi3 → tiny-phi 3;
    an explicit --name of that kind is refused instead of rewritten."""
    import re

    if not needs_tokens(name):
        return name
    # tokenizer_fields writes this key's value as a list of str
    tokens = cast("list[str] | None", next((f.value for f in fields if f.key == "tokenizer.ggml.tokens"), None))
    missing = [t for t in PHI3_TOKENS if tokens is not None and t not in set(tokens)]
    if not missing:
        return name
    if explicit:
        raise InputError(f"--name {name[:60]!r}: llama.cpp applies Phi-3's token rules to a model named phi3 or phi-3 "
                         f"and cannot load this vocabulary then (no {', '.join(missing)}); choose another name")
    return re.sub(r"(?i)(phi)-?(3)", r"\1 \2", name)
