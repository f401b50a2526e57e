"""Hostile tokenizers (issue 26, class 5): damaged tokenizer.json, tokenizer_config.json, chat templates and
tokenizer.model beside an HF base, and damaged tokenizer.ggml.* arrays in a GGUF base.

Each is refused before any output byte (conftest.assert_refused: exit 2, one `ropeconv: error:` line naming the file
and what is wrong, nothing beside the target, the base untouched), for the safetensors output (which copies the
tokenizer files) and the GGUF output (which converts them) alike. What the tokenizers library takes and a GGUF can
carry is converted; what only a GGUF cannot carry (ids with gaps, two tokens on one id) is refused for GGUF alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import add_byte_level_tokenizer, assert_refused, listing, make_tiny, run_cli


@pytest.fixture(scope="module")
def byte_level_base(tmp_path_factory) -> Path:
    """A tiny llama with a trained byte-level BPE tokenizer.json (merges as [a, b] pairs, as tokenizers saves)."""
    return add_byte_level_tokenizer(make_tiny(tmp_path_factory.mktemp("bl"), "llama"))


@pytest.fixture(scope="module")
def sentencepiece_base(byte_level_base, tmp_path_factory) -> Path:
    from ropeconv.fixtures.tokenizers import add_sentencepiece

    base = Path(shutil.copytree(byte_level_base, tmp_path_factory.mktemp("spm") / "base"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (base / name).unlink(missing_ok=True)
    return add_sentencepiece(base)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def extend(base: Path, out: Path, fmt: str) -> int:
    return run_cli("extend", base, "--method", "yarn", "--factor", "2", "--to", fmt, "--no-verify", "-q", "-o", out)


def edit_json(name: str, edit):
    def damage(base: Path) -> None:
        path = base / name
        data = json.loads(path.read_text())
        edit(data)  # in place
        path.write_text(json.dumps(data))
    return damage


def edit_text(name: str, edit):
    """Edit the file as compact JSON text (for what json.dumps cannot write: a repeated key, a lone surrogate)."""
    def damage(base: Path) -> None:
        path = base / name
        path.write_text(edit(json.dumps(json.loads(path.read_text()), separators=(",", ":"))))
    return damage


def write_bytes(name: str, data: bytes):
    def damage(base: Path) -> None:
        (base / name).write_bytes(data)
    return damage


def _vocab(t: dict) -> dict:
    return t["model"]["vocab"]


def _last_ids(t: dict, n: int = 2) -> list[str]:
    vocab = _vocab(t)
    return sorted(vocab, key=vocab.get)[-n:]


def _gap(t: dict) -> None:
    _vocab(t)[_last_ids(t, 1)[0]] += 10


def _shared_id(t: dict) -> None:
    a, b = _last_ids(t)
    _vocab(t)[b] = _vocab(t)[a]


def _merge(value):
    def edit(t: dict) -> None:
        t["model"]["merges"][5] = value
    return edit


def _added(**change):
    def edit(t: dict) -> None:
        t["added_tokens"][0].update(change)
    return edit


def _config(**change):
    def edit(c: dict) -> None:
        c.update(change)
    return edit


TJ, TC = "tokenizer.json", "tokenizer_config.json"
# (damage, words the one line must hold)
BOTH_FORMATS = {
    "token a lone surrogate": (edit_text(TJ, lambda s: s.replace('"vocab":{"<unk>"', '"vocab":{"\\ud800"', 1)),
                               (TJ, "surrogate")),
    "added token a lone surrogate": (edit_text(TJ, lambda s: s.replace('"content":"<unk>"', '"content":"\\udfff"', 1)),
                                     (TJ, "surrogate")),
    "merge of three parts": (edit_json(TJ, _merge(["a", "b", "c"])), (TJ, "tokenizers library", "MergeType")),
    "merge out of the vocabulary": (edit_json(TJ, _merge(["zzq", "qqz"])), (TJ, "zzq", "out of vocabulary")),
    "merges of both forms mixed": (edit_json(TJ, _merge("o n")), (TJ, "tokenizers library")),
    "merge a number": (edit_json(TJ, _merge(5)), (TJ, "tokenizers library")),
    "added token id negative": (edit_json(TJ, _added(id=-1)), (TJ, "-1")),
    "added token id text": (edit_json(TJ, _added(id="x")), (TJ, '"x"')),
    "added token without content": (edit_json(TJ, lambda t: t["added_tokens"][0].pop("content")), (TJ, "content")),
    "tokenizer.json a list": (write_bytes(TJ, b"[1, 2]"), (TJ, "object")),
    "config a list": (write_bytes(TC, b"[1]"), (TC, "object")),
    "config invalid JSON": (write_bytes(TC, b'{"bos_token": "<s>",'), (TC, "not valid JSON")),
    "config invalid UTF-8": (write_bytes(TC, b'{"bos_token": "\xff\xfe"}'), (TC, "UTF-8")),
    "chat_template a number": (edit_json(TC, _config(chat_template=5)), (TC, "chat_template is a number")),
    "chat_template a list of numbers": (edit_json(TC, _config(chat_template=[1, 2])), (TC, "chat_template")),
    "chat_template a lone surrogate": (edit_text(TC, lambda s: s.replace("{", '{"chat_template":"\\ud800",', 1)),
                                       (TC, "chat_template", "surrogate")),
    "bos_token a number": (edit_json(TC, _config(bos_token=5)), (TC, "bos_token is a number")),
    "eos_token content a number": (edit_json(TC, _config(eos_token={"content": 5})), (TC, "eos_token")),
    "add_bos_token text": (edit_json(TC, _config(add_bos_token="yes")), (TC, "add_bos_token")),
    "chat_template.jinja invalid UTF-8": (write_bytes("chat_template.jinja", b"{{ x }}\xff"),
                                          ("chat_template.jinja", "UTF-8")),
}
SENTENCEPIECE = {
    "tokenizer.model garbage": (write_bytes("tokenizer.model", b"\x07garbage\xff" * 8),
                                ("tokenizer.model", "not a SentencePiece model")),
    "tokenizer.model empty": (write_bytes("tokenizer.model", b""), ("tokenizer.model", "empty")),
}
# the tokenizers library takes these; a GGUF vocabulary (one token per id, ids 0..N-1) cannot carry them
GGUF_ONLY = {
    "vocab ids with a gap": (edit_json(TJ, _gap), (TJ, "no token with id", "one token per id")),
    "two tokens on one id": (edit_json(TJ, _shared_id), (TJ, "gives id", "one token per id")),
    # a repeated key: the last one wins (in Python and in tokenizers), leaving its id to two tokens
    "repeated key": (edit_text(TJ, lambda s: s.replace('"<s>":1,', '"<s>":1,"<s>":7,', 1)), (TJ, "gives id 7")),
}


def damaged(source: Path, tmp_path: Path, damage) -> Path:
    base = Path(shutil.copytree(source, tmp_path / "base"))
    damage(base)
    return base


def refuse(capsys, base: Path, tmp_path: Path, fmt: str, mentions: tuple[str, ...]) -> None:
    before = digests(base)
    parent = tmp_path / f"outputs-{fmt}"
    parent.mkdir()
    out = parent / "extended"
    capsys.readouterr()
    assert_refused(capsys, extend(base, out, fmt), out, listing(parent), mentions=mentions)
    assert digests(base) == before


@pytest.mark.parametrize("fmt", ["safetensors", "gguf"])
@pytest.mark.parametrize("case", list(BOTH_FORMATS) + list(SENTENCEPIECE))
def test_damaged_tokenizer_refused_for_every_format(capsys, byte_level_base, sentencepiece_base, tmp_path, case,
                                                    fmt):
    damage, mentions = BOTH_FORMATS.get(case) or SENTENCEPIECE[case]
    base = damaged(sentencepiece_base if case in SENTENCEPIECE else byte_level_base, tmp_path, damage)
    refuse(capsys, base, tmp_path, fmt, mentions)


@pytest.mark.parametrize("case", list(GGUF_ONLY))
def test_vocabulary_a_gguf_cannot_carry(capsys, byte_level_base, tmp_path, case):
    """Refused for GGUF with the reason; the safetensors output copies the tokenizer as the tokenizers library
    reads it."""
    from tokenizers import Tokenizer

    damage, mentions = GGUF_ONLY[case]
    base = damaged(byte_level_base, tmp_path, damage)
    Tokenizer.from_file(str(base / TJ))  # valid for the library: refusing it for safetensors would be wrong
    refuse(capsys, base, tmp_path, "gguf", mentions)
    out = tmp_path / "st"
    assert extend(base, out, "safetensors") == 0
    assert (out / TJ).read_bytes() == (base / TJ).read_bytes()


def test_merges_as_strings_convert_like_pairs(byte_level_base, tmp_path):
    """tokenizers writes merges as [a, b] pairs since 0.20 and read "a b" strings before: both are valid, and
    give the GGUF the same merges."""
    from ropeconv.gguf_io.reader import read_gguf

    strings = damaged(byte_level_base, tmp_path, edit_json(TJ, lambda t: t["model"].update(
        merges=[" ".join(pair) for pair in t["model"]["merges"]])))
    merges = {}
    for name, base in {"pairs": byte_level_base, "strings": strings}.items():
        assert extend(base, tmp_path / name, "gguf") == 0
        merges[name] = read_gguf(next((tmp_path / name).glob("*.gguf"))).value("tokenizer.ggml.merges")
    pairs = json.loads((byte_level_base / TJ).read_text())["model"]["merges"]
    assert merges["pairs"] == merges["strings"] == [" ".join(pair) for pair in pairs]


# ----------------------------------------------------------------------------- a GGUF base's vocabulary


def _tokens(edit):
    def fields(src) -> dict:
        from ropeconv.gguf_io.types import GGUFValueType as T

        tokens = list(src.value("tokenizer.ggml.tokens"))
        edit(tokens)
        return {"tokenizer.ggml.tokens": (T.ARRAY, tokens, T.STRING)}
    return fields


def _shortened(key: str, item: str):
    def fields(src) -> dict:
        from ropeconv.gguf_io.types import GGUFValueType as T

        return {key: (T.ARRAY, list(src.value(key))[:-1], getattr(T, item))}
    return fields


def _merges(value: str):
    def fields(src) -> dict:
        from ropeconv.gguf_io.types import GGUFValueType as T

        merges = list(src.value("tokenizer.ggml.merges"))
        merges[3] = value
        return {"tokenizer.ggml.merges": (T.ARRAY, merges, T.STRING)}
    return fields


def _int_tokens(src) -> dict:
    from ropeconv.gguf_io.types import GGUFValueType as T

    return {"tokenizer.ggml.tokens": (T.ARRAY, list(range(len(src.value("tokenizer.ggml.tokens")))), T.INT32)}


GGUF_BASE = {
    # llama.cpp's loader aborts the process: GGML_ASSERT(id_to_token.size() == token_to_id.size())
    "a repeated token": (_tokens(lambda t: t.__setitem__(300, t[301])), ("tokenizer.ggml.tokens", "token 301")),
    # the bytes of a lone surrogate (ED A0 80), kept by the reader's surrogateescape
    "a lone surrogate's bytes": (_tokens(lambda t: t.__setitem__(300, "\udced\udca0\udc80")),
                                 ("tokenizer.ggml.tokens[300]", "not UTF-8")),
    "token_type one short": (_shortened("tokenizer.ggml.token_type", "INT32"), ("token_type", "entries")),
    "scores one short": (_shortened("tokenizer.ggml.scores", "FLOAT32"), ("scores", "entries")),
    "tokens not strings": (_int_tokens, ("tokenizer.ggml.tokens", "INT32")),
    "a merge without a space": (_merges("abc"), ("tokenizer.ggml.merges[3]", "one space")),
    "a merge of three parts": (_merges("a b c"), ("tokenizer.ggml.merges[3]",)),
    "a merge outside the vocabulary": (_merges("zzq qqz"), ("tokenizer.ggml.merges[3]",)),
}


@pytest.mark.parametrize("case", list(GGUF_BASE))
def test_gguf_base_vocabulary_refused(capsys, tiny_yarn_gguf, tmp_path, case):
    from ropeconv.gguf_io.reader import read_gguf
    from ropeconv.gguf_io.writer import rewrite_gguf

    fields, mentions = GGUF_BASE[case]
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    base = base_dir / tiny_yarn_gguf.name
    rewrite_gguf(read_gguf(tiny_yarn_gguf), base, set_fields=fields(read_gguf(tiny_yarn_gguf)))
    before = digests(base_dir)
    parent = tmp_path / "outputs"
    parent.mkdir()
    out = parent / "extended.gguf"
    capsys.readouterr()
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "2", "--rebase", "--no-verify", "-q", "-o", out)
    assert_refused(capsys, rc, out, [], mentions=mentions)
    assert digests(base_dir) == before


@pytest.mark.parametrize("vocab", [[["a", 0]], None, {"a": "0"}], ids=["list", "missing", "text-id"])
def test_a_malformed_vocabulary_is_refused_by_a_gguf_dry_run(byte_level_base, tmp_path, capsys, vocab):
    """A dry run parses tokenizer.json without loading it in the tokenizers library; a model.vocab that is not an
    object of integer ids was an AttributeError / KeyError traceback there."""
    base = Path(shutil.copytree(byte_level_base, tmp_path / "base"))

    def damage(tok):
        if vocab is None:
            del tok["model"]["vocab"]
        else:
            tok["model"]["vocab"] = vocab

    edit_json("tokenizer.json", damage)(base)
    before, out = digests(base), tmp_path / "outputs" / "out"
    out.parent.mkdir()
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "2", "--to", "gguf", "--dry-run", "-o", out)
    assert_refused(capsys, rc, out, [], mentions=("model.vocab",))
    assert digests(base) == before


@pytest.mark.parametrize("pattern", [{"Regex": ["x"]}, "x"], ids=["list-regex", "text-pattern"])
def test_a_malformed_split_pattern_is_refused_by_a_gguf_dry_run(byte_level_base, tmp_path, capsys, pattern):
    """A Split pre-tokenizer whose pattern is not {"Regex": text} was a TypeError / AttributeError traceback in a
    dry run (found by mypy); it is refused as a pre-tokenizer llama.cpp does not implement."""
    base = Path(shutil.copytree(byte_level_base, tmp_path / "base"))

    def damage(tok):
        tok["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": pattern, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}

    edit_json("tokenizer.json", damage)(base)
    before, out = digests(base), tmp_path / "outputs" / "out"
    out.parent.mkdir()
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "2", "--to", "gguf", "--dry-run", "-o", out)
    assert_refused(capsys, rc, out, [], mentions=("pre-tokenizer",))
    assert digests(base) == before
