"""The base's tokenizer files, read once and strictly, before any output byte: what the safetensors output copies
and the GGUF output converts is then a tokenizer its loaders take.

- tokenizer.json must load in the `tokenizers` library (the loader transformers uses), whose own parser is the
  rule: merges that are not pairs or name tokens outside the vocabulary, added tokens without a content or with an
  id that is not an unsigned integer, a model of the wrong shape;
- no JSON file may hold a lone UTF-16 surrogate ("\\ud800"): Python's json accepts one, UTF-8 cannot encode it;
- tokenizer_config.json (and chat_template.json, special_tokens_map.json) give each key transformers and gguf-py
  read the type they read it as: a chat template is text or a list of {name, template} objects, a special token
  is text or an object with a text "content", add_bos_token/add_eos_token are true or false;
- tokenizer.model must load as a SentencePiece model (when sentencepiece is installed; an empty file never does).

Each refusal is one InputError naming the file and what is wrong in it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv import jsontext
from ropeconv.errors import InputError
from ropeconv.inputfile import read_bytes

# the largest real tokenizer.json files (256k-token vocabularies with their merges) are ~35 MB
MAX_TOKENIZER_JSON_BYTES = 256 * 1024 * 1024
MAX_SIDE_FILE_BYTES = 64 * 1024 * 1024  # configs, chat templates, vocab.json, merges.txt, tokenizer.model
SPECIAL_TOKENS = tuple(f"{kind}_token" for kind in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"))
FLAGS = ("add_bos_token", "add_eos_token")
# a \u escape in the surrogate range: only then can a decoded string hold a lone surrogate
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class TokenizerFiles:
    """The tokenizer beside a checkpoint, as read (and checked) by read_tokenizer."""

    path: Path  # the checkpoint folder
    tokenizer_json: Mapping[str, Any] | None = None
    config: Mapping[str, Any] | None = None  # tokenizer_config.json
    sentencepiece: bool = False  # a tokenizer.model that loads


def read_tokenizer(path: Path, names: tuple[str, ...], *, load: bool = True) -> TokenizerFiles:
    """Check every tokenizer file among `names` (the checkpoint's side files present in `path`). load=False (a dry
    run's outline): tokenizer.json and tokenizer.model are not loaded in their libraries."""
    tokenizer_json = config = None
    for name in names:
        file = path / name
        if name == "tokenizer.json":
            tokenizer_json = _tokenizer_json(file, load)
        elif name == "tokenizer_config.json":
            config = _object(file)
            _check_token_config(file, config)
        elif name == "special_tokens_map.json":
            _check_token_config(file, _object(file))
        elif name == "chat_template.json":
            data = _object(file)
            _check_chat_template(file, data.get("chat_template"))
        elif name in ("added_tokens.json", "vocab.json"):
            _check_ids(file, _object(file))
        elif name in ("chat_template.jinja", "merges.txt"):
            _text(file)
        elif name == "tokenizer.model" and load:
            _check_sentencepiece(file)
    return TokenizerFiles(path, tokenizer_json, config, "tokenizer.model" in names)


def _text(file: Path, limit: int = MAX_SIDE_FILE_BYTES) -> str:
    raw = read_bytes(file, limit, file.name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{file}: not UTF-8 text (byte {exc.start})") from None


def _object(file: Path, limit: int = MAX_SIDE_FILE_BYTES) -> dict[str, Any]:
    return _json_object(file, limit)[0]


def _json_object(file: Path, limit: int) -> tuple[dict[str, Any], str]:
    """The parsed object and the text it was parsed from."""
    text = _text(file, limit)
    data = jsontext.loads(text, str(file))
    if not isinstance(data, dict):
        raise InputError(f"{file}: expected a JSON object, got {_kind(data)}")
    if _SURROGATE_ESCAPE.search(text):
        _refuse_surrogates(file, data)
    return data, text


def _refuse_surrogates(file: Path, data: Any) -> None:
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                _utf8(file, key, f"{where} key" if where else "a key")
                stack.append((value, f"{where}.{key}" if where else key))
        elif isinstance(node, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(node))
        elif isinstance(node, str):
            _utf8(file, node, where)


def _utf8(file: Path, text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{file}: {where} {text[:40]!r} holds a lone UTF-16 surrogate, which is not a character "
                         "(UTF-8 cannot encode it; the tokenizers library and llama.cpp refuse it)") from None


def _tokenizer_json(file: Path, load: bool = True) -> dict[str, Any]:
    data, text = _json_object(file, MAX_TOKENIZER_JSON_BYTES)
    if not load:
        return data
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - the library raises a bare Exception with serde's message
        raise InputError(f"{file}: the tokenizers library cannot load it ({one_line(exc)})") from None
    return data


def one_line(exc: BaseException, limit: int = 200) -> str:
    """A library's error message as part of one stderr line."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    names: dict[type, str] = {str: "text", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _check_chat_template(file: Path, template: Any) -> None:
    if template is None or isinstance(template, str):
        return
    named = isinstance(template, list) and all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)
        for t in template)
    if not named:
        got = _kind(template) if not isinstance(template, list) else "a list that is not all {name, template} objects"
        raise InputError(f"{file}: chat_template is {got}; expected the template's text or a list of "
                         '{"name": ..., "template": ...} objects')


def _check_token(file: Path, key: str, token: Any) -> None:
    if token is None or isinstance(token, str) or (isinstance(token, dict) and isinstance(token.get("content"), str)):
        return
    raise InputError(f"{file}: {key} is {_kind(token)}; expected the token's text or an object with a text "
                     '"content"')


def _check_token_config(file: Path, config: dict[str, Any]) -> None:
    """tokenizer_config.json or special_tokens_map.json: the keys transformers and gguf-py read, of their types."""
    _check_chat_template(file, config.get("chat_template"))
    for key in SPECIAL_TOKENS:
        _check_token(file, key, config.get(key))
    extra = config.get("additional_special_tokens")
    if extra is not None:
        if not isinstance(extra, list):
            raise InputError(f"{file}: additional_special_tokens is {_kind(extra)}; expected a list of tokens")
        for i, token in enumerate(extra):
            _check_token(file, f"additional_special_tokens[{i}]", token)
    for key in FLAGS:
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise InputError(f"{file}: {key} is {_kind(config[key])}; expected true or false")
    if config.get("tokenizer_class") is not None and not isinstance(config["tokenizer_class"], str):
        raise InputError(f"{file}: tokenizer_class is {_kind(config['tokenizer_class'])}; expected a class name")
    decoder = config.get("added_tokens_decoder")
    if decoder is not None:
        if not isinstance(decoder, dict):
            raise InputError(f"{file}: added_tokens_decoder is {_kind(decoder)}; expected an object keyed by id")
        for token_id, token in decoder.items():
            if not (token_id.isascii() and token_id.isdigit()):
                raise InputError(f"{file}: added_tokens_decoder key {token_id[:40]!r} is not a token id")
            if not (isinstance(token, dict) and isinstance(token.get("content"), str)):
                raise InputError(f"{file}: added_tokens_decoder[{token_id}] is not an object with a text \"content\"")


def _check_ids(file: Path, table: dict[str, Any]) -> None:
    """vocab.json, added_tokens.json: token text → id."""
    for token, token_id in table.items():
        if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
            raise InputError(f"{file}: the id of {token[:40]!r} is {token_id!r}; expected a non-negative integer")


def _check_sentencepiece(file: Path) -> None:
    raw = read_bytes(file, MAX_SIDE_FILE_BYTES, file.name)
    if not raw:
        raise InputError(f"{file}: empty; a SentencePiece model holds its pieces")
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        return  # nothing here can parse it; a GGUF conversion, which needs it, says so
    processor = SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(raw)
    except (RuntimeError, OSError, ValueError) as exc:
        raise InputError(f"{file}: not a SentencePiece model ({one_line(exc)})") from None
    if processor.vocab_size() <= 0:
        raise InputError(f"{file}: a SentencePiece model without pieces")
