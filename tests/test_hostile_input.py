"""Hostile input (issue 14): files that lie about their sizes, configs that would size a model from
nothing, non-regular files, deep nesting, damaged recorded plans, folder names that are not UTF-8,
non-finite numbers and malformed safetensors headers.

The contract for every refusal: exit 2, exactly one `ropeconv: error:` line on stderr, no traceback,
nothing left beside the target (conftest.assert_refused). Where the old behaviour was a hang, the case
runs under a watchdog that releases the FIFO, so a regression fails instead of blocking the suite.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import TINY, add_byte_level_tokenizer, assert_refused, listing, make_tiny, read_json, run_cli

from ropeconv.checkpoint import load_checkpoint
from ropeconv.checkpoint.shapes import ALWAYS, SHAPES
from ropeconv.errors import InputError

HERE = Path(__file__).parent


# ----------------------------------------------------------------------------- helpers


def extend(base: Path, out: Path, *args: str) -> int:
    return run_cli("extend", base, "--method", "yarn", "--factor", "2", *args, "-o", out)


def edit_config(base: Path, **changes) -> None:
    cfg = read_json(base / "config.json")
    cfg.update(changes)
    (base / "config.json").write_text(json.dumps(cfg))


def header_of(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_header(path: Path, header_text: bytes, data: bytes, length: int | None = None) -> None:
    header_text += b" " * (-len(header_text) % 8)
    path.write_bytes(struct.pack("<Q", len(header_text) if length is None else length) + header_text + data)


def rewrite_header(path: Path, edit) -> None:
    header, data = header_of(path)
    ranges = {name: tuple(info["data_offsets"]) for name, info in header.items() if name != "__metadata__"}
    edit(header)
    # a tensor dropped from the header takes its bytes with it (a hole is refused, as safetensors refuses it)
    for begin, end in sorted((r for n, r in ranges.items() if n not in header and r not in
                              [tuple(v.get("data_offsets", ())) for v in header.values() if isinstance(v, dict)]),
                             reverse=True):
        data = data[:begin] + data[end:]
        for info in header.values():
            if isinstance(info, dict) and "data_offsets" in info and info["data_offsets"][0] >= end:
                info["data_offsets"] = [o - (end - begin) for o in info["data_offsets"]]
    write_header(path, json.dumps(header, separators=(",", ":")).encode(), data)


def refused_in_place(capsys, rc: int, *mentions: str) -> str:
    """The contract for commands that write nothing (inspect, verify)."""
    err = capsys.readouterr().err
    assert rc == 2, f"exit {rc}; stderr:\n{err}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: "), err
    for word in mentions:
        assert word.lower() in lines[0].lower(), lines[0]
    print("REFUSED:", lines[0])
    return lines[0]


@contextlib.contextmanager
def no_hang(*fifos: Path, seconds: int = 60):
    """Fail instead of blocking the suite when the code under test waits on a FIFO: after `seconds`, each FIFO
    is opened for writing and closed (a reader blocked in open() or read() then sees end of file, even inside
    a C library that retries interrupted calls), and the test fails."""
    blocked = threading.Event()

    def release():
        blocked.set()
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    timer = threading.Timer(seconds, release)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    assert not blocked.is_set(), f"blocked on {', '.join(map(str, fifos))} for {seconds} s"


def deep(n: int) -> str:
    return "[" * n + "1" + "]" * n


# ----------------------------------------------------------------------------- 4: GGUF counts and memory
# Hand-built GGUF files (the format from the GGUF spec, not from ropeconv's writer): a llama header that
# inspect can describe, plus whatever the case needs.

U8, U32, F32, BOOL, STRING, ARRAY = 0, 4, 6, 7, 8, 9


def g_str(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def kv_u32(key: str, value: int) -> bytes:
    return g_str(key.encode()) + struct.pack("<II", U32, value)


def kv_str(key: str, value: bytes) -> bytes:
    return g_str(key.encode()) + struct.pack("<I", STRING) + g_str(value)


def kv_array(key: str, item_type: int, count: int, items: bytes) -> bytes:
    return g_str(key.encode()) + struct.pack("<IIQ", ARRAY, item_type, count) + items


def llama_kvs(**override: bytes) -> list[bytes]:
    kvs = {"general.architecture": kv_str("general.architecture", b"llama"),
           "llama.context_length": kv_u32("llama.context_length", 64),
           "llama.embedding_length": kv_u32("llama.embedding_length", 64),
           "llama.attention.head_count": kv_u32("llama.attention.head_count", 4)}
    kvs.update(override)
    return list(kvs.values())


def gguf(kvs: list[bytes], infos: bytes = b"", n_tensors: int = 0, n_kv: int | None = None) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs) if n_kv is None else n_kv)
    return head + b"".join(kvs) + infos


def test_gguf_arrays_spanning_the_file_stay_within_memory(tmp_path):
    """An array whose declared length spans the rest of the file: inspect and retrofit planning succeed
    with the address space capped at the mapped file + 16 MiB (decoded as a list it needs 6–16× the file)."""
    u8 = 32 << 20
    (tmp_path / "u8.gguf").write_bytes(gguf(llama_kvs() + [kv_array("test.blob", U8, u8, bytes(u8))]))
    n = (4 << 20) // 10  # two-byte strings: 10 bytes each in the file, ~60 bytes each as Python strings
    (tmp_path / "strings.gguf").write_bytes(gguf(llama_kvs() + [kv_array("test.words", STRING, n, g_str(b"ab") * n)]))
    n = 8 << 20
    (tmp_path / "bools.gguf").write_bytes(gguf(llama_kvs() + [kv_array("test.flags", BOOL, n, b"\x01" * n)]))
    files = [tmp_path / "u8.gguf", tmp_path / "strings.gguf", tmp_path / "bools.gguf"]
    proc = subprocess.run([sys.executable, str(HERE / "fuzz_worker.py"), "files", *map(str, files), "--budget-mib", "16"],
                          capture_output=True, text=True, timeout=300)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(files), proc.stdout + proc.stderr
    for r in results:
        print(r["mutation"], r.get("file_bytes"), "bytes, peak RSS +", r.get("peak_kib"), "KiB", r.get("outcome"))
        assert r["status"] == "ok", f"{r['mutation']}: {r.get('error')}\n{r.get('traceback', '')}"
        assert r["outcome"]["inspect"] == "ok" and r["outcome"]["plan"].startswith("ok"), r["outcome"]
        assert r["peak_kib"] < 16 << 10, r
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("case", ["n_kv", "n_tensors", "too_many_tensors", "array_count", "string_length",
                                  "n_dims", "long_tensor_name", "long_key", "empty_key", "long_arch",
                                  "array_where_a_number_belongs"])
def test_gguf_absurd_counts_refused(capsys, tmp_path, case):
    info = g_str(b"t") + struct.pack("<IQIQ", 1, 32, 0, 0)  # one F32 tensor of 32 values
    data = bytes(32 * 4)
    if case == "n_kv":
        raw = gguf(llama_kvs(), n_kv=2**60)
        mention = "key-value count"
    elif case == "n_tensors":
        raw = gguf(llama_kvs(), n_tensors=2**40)
        mention = "tensor count"
    elif case == "too_many_tensors":  # each info fits: the cap speaks, before a Python object per tensor
        n = 65537
        infos = b"".join(g_str(f"{i:05x}".encode()) + struct.pack("<IIQ", 0, 0, 0) for i in range(n))
        raw = gguf(llama_kvs(), infos, n_tensors=n)
        mention = "at most 65536"
    elif case == "array_count":
        raw = gguf(llama_kvs() + [kv_array("test.a", U32, 2**61, b"\0" * 64)])
        mention = "test.a"
    elif case == "string_length":
        raw = gguf(llama_kvs(**{"general.architecture": kv_str("general.architecture", b"llama")[:-13]
                                + struct.pack("<Q", 2**62) + b"llama"}))
        mention = "truncated"
    elif case == "n_dims":
        raw = gguf(llama_kvs(), g_str(b"t") + struct.pack("<I5QIQ", 5, 1, 1, 1, 1, 1, 0, 0), n_tensors=1)
        mention = "dimensions"
    elif case == "long_tensor_name":  # llama.cpp refuses names of 64 bytes or more (GGML_MAX_NAME)
        raw = gguf(llama_kvs(), g_str(b"x" * 64) + struct.pack("<IQIQ", 1, 32, 0, 0), n_tensors=1) + data
        mention = "64 bytes"
    elif case == "long_key":
        raw = gguf(llama_kvs() + [kv_u32("k" * 5000, 1)])
        mention = "5000 bytes"
    elif case == "empty_key":
        raw = gguf(llama_kvs() + [kv_u32("", 1)])
        mention = "0 bytes"
    elif case == "long_arch":
        raw = gguf(llama_kvs(**{"general.architecture": kv_str("general.architecture", b"l" * 100_000)}), info,
                   n_tensors=1) + data
        mention = "general.architecture"
    else:  # a million-item array where llama.cpp reads one number: refused before it is decoded
        n = 1_000_000
        raw = gguf(llama_kvs(**{"llama.embedding_length": kv_array("llama.embedding_length", U32, n, bytes(4 * n))}))
        mention = "single value"
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(raw)
    refused_in_place(capsys, run_cli("inspect", path), path.name, mention)
    out = tmp_path / "out.gguf"
    before = listing(tmp_path)
    rc = run_cli("extend", path, "--method", "yarn", "--factor", "2", "--no-verify", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=(path.name,))


# ----------------------------------------------------------------------------- 5, 12: config vs tensor index


@pytest.mark.parametrize(
    "changes, args, mentions",
    [
        ({"vocab_size": 1e8}, (), ("vocab_size", "integer")),
        ({"vocab_size": 100_000_000}, (), ("model.embed_tokens.weight", "100000000")),
        ({"head_dim": 2**40}, (), ("q_proj", str(2**42))),
        ({"num_hidden_layers": 1e6}, (), ("num_hidden_layers", "integer")),
        ({"num_hidden_layers": 1_000_000}, (), ("model.layers.2.", "1000000")),
        ({"num_attention_heads": 0}, (), ("num_attention_heads", "at least 1")),
        ({"num_attention_heads": True}, (), ("num_attention_heads", "integer")),
        ({"hidden_size": "64"}, (), ("hidden_size", "integer")),
        ({"intermediate_size": None}, (), ("intermediate_size",)),
        # 4 heads over 3 key/value heads: refused before the first byte of the GGUF (one stderr line)
        ({"num_key_value_heads": 3}, ("--to", "gguf"), ("num_key_value_heads", "multiple")),
        ({"num_hidden_layers": 0}, ("--to", "onnx"), ("num_hidden_layers", "no layers")),
        ({"num_hidden_layers": 0}, (), ("num_hidden_layers",)),
    ],
    ids=["vocab-1e8", "vocab-100M", "head_dim-2**40", "layers-1e6-float", "layers-1e6", "heads-0", "heads-true",
         "hidden-string", "intermediate-null", "kv-heads-3-gguf", "layers-0-onnx", "layers-0"],
)
def test_config_disagreeing_with_the_tensors(capsys, base, out, changes, args, mentions):
    if "gguf" in args:
        add_byte_level_tokenizer(base)  # so --to gguf gets as far as the config
    edit_config(base, **changes)
    before = listing(out.parent)
    assert_refused(capsys, extend(base, out, *args, "--no-verify"), out, before, mentions=mentions)


@pytest.mark.parametrize(
    "family, changes, mentions",
    [
        ("llama", {"rms_norm_eps": "abc"}, ("config.json", "wrong kind", "'abc'")),
        ("llama", {"hidden_act": ["silu"]}, ("config.json", "wrong kind")),
        ("llama", {"layer_types": ["full_attention"]}, ("1 layer_types", "num_hidden_layers 2")),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": "x", "layer_types": None},
         ("config.json", "wrong kind")),
        ("smollm3", {"no_rope_layers": [1, 0]}, ("2 no_rope_layers", "num_hidden_layers 4")),
    ],
    ids=["eps-string", "activation-list", "layer_types-short", "max_window_layers-string", "no_rope_layers-short"],
)
def test_onnx_config_values_of_the_wrong_kind(capsys, tmp_path, out, family, changes, mentions):
    """The ONNX plan reads config.json through the families' defaults, not transformers' config class, which
    refused these: each is one line, exit 2, nothing written (a traceback before)."""
    base = make_tiny(tmp_path, family)
    edit_config(base, **changes)
    capsys.readouterr()  # transformers' progress bar from saving the tiny model
    before = listing(out.parent)
    assert_refused(capsys, extend(base, out, "--to", "onnx", "--no-verify"), out, before, mentions=mentions)


def test_verify_checks_the_base_config_before_transformers_loads_it(capsys, base, out):
    assert extend(base, out, "--no-verify", "-q") == 0
    edit_config(base, vocab_size=1024)  # the base changed after the run: transformers would size from it
    capsys.readouterr()
    refused_in_place(capsys, run_cli("verify", out, "-q", "--device", "cpu"), "model.embed_tokens.weight", "1024")


@pytest.mark.parametrize("damage", ["missing-q_proj", "transposed-gate_proj"])
def test_tensor_missing_or_transposed(capsys, base, out, damage):
    def edit(header):
        if damage == "missing-q_proj":
            del header["model.layers.0.self_attn.q_proj.weight"]
        else:  # [in, out] where transformers stores nn.Linear as [out, in]; the bytes are the same
            header["model.layers.1.mlp.gate_proj.weight"]["shape"].reverse()

    rewrite_header(base / "model.safetensors", edit)
    before = listing(out.parent)
    name = "q_proj" if damage == "missing-q_proj" else "gate_proj"
    assert_refused(capsys, extend(base, out, "--no-verify"), out, before, mentions=(name,))


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: make_tiny(root, family) for family in TINY}


def _copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    return Path(shutil.copytree(src, dst))


@pytest.mark.parametrize("family", sorted(TINY))
def test_shape_table_per_family(families, tmp_path, family):
    """Every family's table agrees with the checkpoint transformers writes, and each kind of disagreement
    is refused: a dimension off, a required tensor missing, a weight transposed, one layer too many."""
    table = SHAPES[family]
    ckpt = load_checkpoint(families[family])  # transformers' own checkpoint passes
    assert ckpt.arch.model_type == family
    config = read_json(families[family] / "config.json")
    hidden_key = next(d.keys for n, d in table.dims if n == "hidden")
    hidden_key = next(k for k in hidden_key if k in config)
    layer_key = next(k for n, d in table.dims if n == "layers" for k in d.keys if k in config)

    def refused(edit_cfg=None, edit_header=None) -> str:
        b = _copy(families[family], tmp_path / "b")
        if edit_cfg:
            cfg = read_json(b / "config.json")
            edit_cfg(cfg)
            (b / "config.json").write_text(json.dumps(cfg))
        if edit_header:
            rewrite_header(b / "model.safetensors", edit_header)
        with pytest.raises(InputError) as exc:
            load_checkpoint(b)
        return str(exc.value)

    # the hidden size off by a multiple of every head count: a shape must disagree, not a divisibility rule
    msg = refused(edit_cfg=lambda c: c.update({hidden_key: c[hidden_key] + 96}))
    assert "config.json implies" in msg, msg
    msg = refused(edit_cfg=lambda c: c.update({layer_key: c[layer_key] + 1}))
    assert f"layers.{config[layer_key]}." in msg or f"h.{config[layer_key]}." in msg \
        or f"blocks.{config[layer_key]}." in msg, msg
    required = [t.name.format(i=1, e=1) for t in table.tensors if t.need == ALWAYS and "{i}" in t.name
                and t.layers != "dense"]  # mixture of experts: the tiny configs give every layer experts
    names = {e.name for e in ckpt.tensors}
    for name in required:
        assert name in names, f"{name} is required by the table but transformers did not write it"
    msg = refused(edit_header=lambda h: h.pop(required[0]))
    assert "checkpoint has no" in msg and required[0] in msg, msg
    square = {e.name for e in ckpt.tensors if len(e.shape) == 2 and e.shape[0] == e.shape[1]}
    target = next(n for n in required if n.endswith(".weight") and n in names and n not in square
                  and len(next(e for e in ckpt.tensors if e.name == n).shape) == 2)
    msg = refused(edit_header=lambda h: h[target]["shape"].reverse())
    assert target in msg and "config.json implies" in msg, msg
    experts = [t.name for t in table.tensors if "{e}" in t.name]
    if experts:  # the last expert of the last layer missing: every expert of every layer is checked
        last = experts[0].format(i=config[layer_key] - 1, e=next(config[k] for n, d in table.dims if n == "experts"
                                                                  for k in d.keys if k in config) - 1)
        msg = refused(edit_header=lambda h: h.pop(last))
        assert "checkpoint has no" in msg and last in msg, msg
    print(family, "ok:", len(ckpt.tensors), "tensors checked")


def test_untied_lm_head_required_tied_not(families, tmp_path):
    b = _copy(families["llama"], tmp_path / "b")
    rewrite_header(b / "model.safetensors", lambda h: h.pop("lm_head.weight"))
    with pytest.raises(InputError, match="lm_head.weight"):
        load_checkpoint(b)  # tie_word_embeddings false: the output matrix is its own tensor
    edit_config(b, tie_word_embeddings=True)
    assert load_checkpoint(b).arch.model_type == "llama"


# ----------------------------------------------------------------------------- 6: non-regular weight files


def _fifo(path: Path) -> None:
    if path.exists():
        path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("where", ["model.safetensors", "indexed-shard", "pytorch_model.bin", "directory",
                                   "char-device", "config.json", "index"])
def test_non_regular_weight_file_refused(capsys, base, out, where):
    args = ["--no-verify"]
    if where == "model.safetensors":
        _fifo(base / "model.safetensors")
    elif where == "indexed-shard":
        header, _ = header_of(base / "model.safetensors")
        weight_map = {name: "model.safetensors" for name in header if name != "__metadata__"}
        weight_map["extra.weight"] = "model-00002-of-00002.safetensors"
        (base / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        _fifo(base / "model-00002-of-00002.safetensors")
    elif where == "pytorch_model.bin":
        (base / "model.safetensors").unlink()
        _fifo(base / "pytorch_model.bin")
        args.append("--allow-pickle")
    elif where == "directory":
        (base / "model.safetensors").unlink()
        (base / "model.safetensors").mkdir()
    elif where == "char-device":
        (base / "model.safetensors").unlink()
        (base / "model.safetensors").symlink_to("/dev/zero")
    elif where == "config.json":
        _fifo(base / "config.json")
    else:
        _fifo(base / "model.safetensors.index.json")
    kind = {"directory": "directory", "char-device": "character device"}.get(where, "FIFO")
    fifos = [p for p in base.iterdir() if p.is_fifo()]
    before = listing(out.parent)
    with no_hang(*fifos):
        rc = extend(base, out, *args)
    assert_refused(capsys, rc, out, before, mentions=(kind,))
    if where != "pytorch_model.bin":  # inspect never loads pickles (it refuses them as such)
        with no_hang(*fifos):
            refused_in_place(capsys, run_cli("inspect", base), kind)


def test_fifo_gguf_base_refused(capsys, tmp_path):
    fifo = tmp_path / "base.gguf"
    os.mkfifo(fifo)
    out = tmp_path / "outputs" / "out.gguf"
    out.parent.mkdir()
    before = listing(out.parent)
    with no_hang(fifo):
        rc = run_cli("extend", fifo, "--method", "yarn", "--factor", "2", "--no-verify", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=("FIFO",))
    with no_hang(fifo):
        rc = run_cli("inspect", fifo)
    refused_in_place(capsys, rc, "FIFO")


# ----------------------------------------------------------------------------- 8: nesting, and wrong types


@pytest.mark.parametrize("where", ["config.json", "safetensors-header", "index", "recipe"])
def test_deep_nesting_refused(capsys, base, out, tmp_path, where):
    if where == "config.json":
        text = (base / "config.json").read_text()
        (base / "config.json").write_text(text.rstrip()[:-1] + f', "x": {deep(100_000)}}}')
    elif where == "safetensors-header":
        header, data = header_of(base / "model.safetensors")
        text = json.dumps(header, separators=(",", ":"))
        write_header(base / "model.safetensors", (text[:-1] + f',"x":{deep(100_000)}}}').encode(), data)
    elif where == "index":
        (base / "model.safetensors.index.json").write_text('{"weight_map": {}, "x": ' + deep(100_000) + "}")
    before = listing(out.parent)
    if where == "recipe":
        recipe = tmp_path / "deep.yaml"
        recipe.write_text(f"base: {base}\nmethod: {{name: yarn, factor: {deep(5000)}}}\nout: {out}\n")
        rc = run_cli("recipe", "run", recipe)
    else:
        rc = extend(base, out, "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("nested",))


@pytest.mark.parametrize("case", ["model_type", "rope_type", "dtype"])
def test_list_where_a_string_belongs(capsys, base, out, case):
    if case == "model_type":
        edit_config(base, model_type=["llama"])
    elif case == "rope_type":
        edit_config(base, rope_scaling={"rope_type": ["yarn"], "factor": 2.0})
    else:
        rewrite_header(base / "model.safetensors",
                       lambda h: h["model.norm.weight"].update(dtype=["F32"]))
    before = listing(out.parent)
    assert_refused(capsys, extend(base, out, "--rebase", "--no-verify"), out, before, mentions=(case,))


# ----------------------------------------------------------------------------- 9: a damaged ropeconv.plan


PLANS = {"truncated": None, "list": "[1, 2]", "empty-object": "{}", "deep": deep(10_000),
         "nan": '{"kind": "rope", "method": "yarn", "theta": NaN}', "not-json": "\x00\xff"}


@pytest.mark.parametrize("damage", list(PLANS))
def test_damaged_plan_inspect_shows_it_verify_refuses(capsys, tiny_yarn_gguf, tmp_path, damage):
    """inspect describes the file and says the recorded plan is damaged (exit 0); verify, which needs the
    plan, refuses in one line with the same words."""
    from gguf import GGUFValueType

    from ropeconv.gguf_io import read_gguf, rewrite_gguf

    src = read_gguf(tiny_yarn_gguf)
    plan = PLANS[damage] if PLANS[damage] is not None else src.value("ropeconv.plan")[:40]
    bad = tmp_path / tiny_yarn_gguf.name
    rewrite_gguf(src, bad, set_fields={"ropeconv.plan": (GGUFValueType.STRING, plan)})
    capsys.readouterr()
    assert run_cli("inspect", bad) == 0
    shown = capsys.readouterr()
    assert "ropeconv.plan is damaged" in shown.out and "verify cannot check" in shown.out, shown.out
    assert shown.err == ""
    assert run_cli("inspect", bad, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ropeconv_plan"] == "damaged" and info["ropeconv"] is None and info["tensors"] == len(src.tensors)
    refused_in_place(capsys, run_cli("verify", bad, "--base", tiny_yarn_gguf, "-q"), "ropeconv.plan is damaged")
    # the undamaged file reads as recorded
    capsys.readouterr()
    assert run_cli("inspect", tiny_yarn_gguf, "--json") == 0
    assert json.loads(capsys.readouterr().out)["ropeconv_plan"] == "recorded"


# ----------------------------------------------------------------------------- 11: folder names that are not UTF-8


def test_base_folder_name_not_utf8(capsys, tiny_llama, tmp_path):
    """Working output: the card shows the name with \\xNN escapes, the manifest and config are strict JSON, the
    GGUF records the base path's exact bytes, and parity runs (its runtimes reached through a UTF-8 alias)."""
    base = add_byte_level_tokenizer(Path(shutil.copytree(tiny_llama, tmp_path / "base")))
    base = base.rename(tmp_path / os.fsdecode(b"base-\xff\xfe"))  # after: the tokenizer library cannot save there
    out = tmp_path / "outputs" / os.fsdecode(b"out-\xfe")
    out.parent.mkdir()
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "2", "--to", "safetensors,gguf", "-q", "-o", out)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "base-\\xff\\xfe" in (out / "README.md").read_text(encoding="utf-8")
    for f in ("manifest.json", "config.json"):
        strict_json(out / f)
    manifest = read_json(out / "manifest.json")
    assert manifest["base"]["path"] == str(base.resolve())  # JSON's \udcff escapes: the path round-trips
    assert set(manifest["parity"]) == {"safetensors", "gguf"}  # both proven in their runtimes
    from ropeconv.gguf_io import read_gguf

    gguf_file = next(out.glob("*.gguf"))
    recorded = read_gguf(gguf_file).value("ropeconv.base_path")
    assert os.fsencode(recorded) == os.fsencode(str(base.resolve()))
    assert run_cli("inspect", out, "--json") == 0
    strict_json_text(capsys.readouterr().out)


def test_onnx_output_folder_not_utf8(capsys, tiny_llama, tmp_path):
    """onnx.checker takes its path as UTF-8 text: it is handed an alias."""
    out = tmp_path / os.fsdecode(b"onnx-\xff")
    rc = run_cli("extend", tiny_llama, "--method", "yarn", "--factor", "2", "--to", "onnx", "--no-verify", "-q",
                 "-o", out)
    assert rc == 0, capsys.readouterr().err
    assert (out / "onnx" / "model.onnx").is_file()


# ----------------------------------------------------------------------------- 13: non-finite numbers


def _reject(token: str):
    raise ValueError(f"{token} is not JSON")


def strict_json_text(text: str):
    return json.loads(text, parse_constant=_reject)


def strict_json(path: Path):
    return strict_json_text(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_non_finite_rope_theta_refused(capsys, base, out, literal):
    text = (base / "config.json").read_text()
    (base / "config.json").write_text(text.rstrip()[:-1] + f', "rope_theta": {literal}}}')
    before = listing(out.parent)
    assert_refused(capsys, extend(base, out), out, before, mentions=("rope_theta", literal))


@pytest.mark.parametrize("theta", [-1, 0, 1, "10000", True])
def test_out_of_range_rope_theta_refused(capsys, base, out, theta):
    cfg = read_json(base / "config.json")
    for where in (cfg, cfg.get("rope_parameters") or {}):
        where["rope_theta"] = theta
    (base / "config.json").write_text(json.dumps(cfg))
    before = listing(out.parent)
    assert_refused(capsys, extend(base, out, "--no-verify"), out, before, mentions=("rope",))


def test_written_json_is_strict(capsys, base, out):
    assert extend(base, out, "--no-verify", "-q") == 0
    for f in ("config.json", "manifest.json"):
        strict_json(out / f)
    from ropeconv import jsontext

    with pytest.raises(InputError, match="non-finite"):
        jsontext.dumps({"rope_theta": math.inf}, "config.json")


# ----------------------------------------------------------------------------- 14: malformed safetensors headers


def _first_2d(header: dict) -> str:
    return next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2)


def _by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


HEADER_DAMAGE = {
    # [true, 64] for a [64] tensor: Python counts True as 1, so the bytes agree; safetensors cannot read it back
    "bool-in-shape": lambda h: h["model.norm.weight"].update(shape=[True] + h["model.norm.weight"]["shape"]),
    "float-in-shape": lambda h: h[_first_2d(h)].update(shape=[float(h[_first_2d(h)]["shape"][0]),
                                                              h[_first_2d(h)]["shape"][1]]),
    "negative-offset": lambda h: h[_by_offset(h)[0]].update(data_offsets=[-4, h[_by_offset(h)[0]]["data_offsets"][1]]),
    "overlapping": lambda h: h[_by_offset(h)[1]].update(
        data_offsets=[o - 4 for o in h[_by_offset(h)[1]]["data_offsets"]]),
    "past-the-file": lambda h: h[_by_offset(h)[-1]].update(
        data_offsets=[o + 4096 for o in h[_by_offset(h)[-1]]["data_offsets"]]),
    "size-mismatch": lambda h: h[_first_2d(h)]["shape"].__setitem__(0, h[_first_2d(h)]["shape"][0] + 1),
    "unknown-dtype": lambda h: h[_first_2d(h)].update(dtype="F128"),
    "dtype-list": lambda h: h[_first_2d(h)].update(dtype=["F32"]),
    "lone-surrogate-name": lambda h: h.update({"\ud800bad": h.pop(_by_offset(h)[0])}),
}


@pytest.mark.parametrize("verify", [False, True], ids=["no-verify", "verify"])
@pytest.mark.parametrize("damage", list(HEADER_DAMAGE) + ["non-finite", "header-length"])
def test_malformed_safetensors_header_refused(capsys, base, out, damage, verify):
    weights = base / "model.safetensors"
    if damage == "non-finite":
        header, data = header_of(weights)
        text = json.dumps(header, separators=(",", ":"))
        name = _first_2d(header)
        text = text.replace(f'"{name}":{{', f'"{name}":{{"scale":NaN,', 1)
        write_header(weights, text.encode(), data)
    elif damage == "header-length":
        header, data = header_of(weights)
        write_header(weights, json.dumps(header).encode(), data, length=weights.stat().st_size * 2)
    else:
        rewrite_header(weights, HEADER_DAMAGE[damage])
    before = listing(out.parent)
    rc = extend(base, out, *([] if verify else ["--no-verify"]), "-q")
    assert_refused(capsys, rc, out, before, mentions=("model.safetensors",))


@pytest.mark.parametrize("lists", [1, 2, 63, 64, 65, 66])
def test_nesting_is_refused_at_the_same_depth_through_lists_of_plain_values(lists):
    """check_tree passes over a container of plain leaves without walking it (a tokenizer's vocabulary and merges
    cost 0.2-0.5 s walked node by node); nesting beyond MAX_DEPTH must still be refused exactly where it was: a
    chain of `lists` lists whose innermost holds strings has its innermost container at depth lists - 1."""
    from ropeconv import jsontext

    data: object = ["a", "b"]
    for _ in range(lists - 1):
        data = [data, "x"]
    text = json.dumps({"merges": data})  # the object adds one level
    if lists >= jsontext.MAX_DEPTH:  # innermost list at depth `lists` (object at 0) must be < MAX_DEPTH
        with pytest.raises(InputError, match="nested more than"):
            jsontext.loads(text, "tokenizer.json")
    else:
        assert jsontext.loads(text, "tokenizer.json") == {"merges": data}
    with pytest.raises(InputError, match="not a finite number"):  # a float is never a plain leaf
        jsontext.loads(json.dumps({"scores": [[0.5, 1.0]] * 3 + [[1.0, "NaN"]]}).replace('"NaN"', "NaN"), "t.json")
