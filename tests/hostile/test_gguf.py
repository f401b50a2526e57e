"""Hostile GGUF bases: hand-built files (the format from the GGUF spec, not from ropeconv's writer) whose counts,
lengths and arrays are absurd or span the file, a FIFO as the base, a damaged recorded ropeconv.plan, and a
seeded mutation fuzz of a small real GGUF through the readers, `inspect` and a planning step, each mutant in a
forked child with its address space capped (fuzz_worker.py: `python tests/hostile/fuzz_worker.py gguf BASE
--seed S --only I` replays one).

Every refusal is exit 2 with one `ropeconv: error:` line; where the old behaviour was a hang the case runs under
a watchdog that releases the FIFO, so a regression fails instead of blocking the suite.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from tests.conftest import assert_refused, listing, run_cli
from tests.hostile.conftest import HERE, deep, fuzz, no_hang, refused_in_place

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


HUBS = {"not-json": "\x00\xff", "list": "[1]", "numbers": '{"repo_id": 1}', "deep": deep(10_000),
        "long": '{"repo_id": "' + "o/" * 5000 + '"}'}


@pytest.mark.parametrize("damage", list(HUBS))
def test_damaged_hub_record_is_not_shown(capsys, tiny_yarn_gguf, tmp_path, damage):
    """ropeconv.base_hub (the Hub base of a GGUF extended from a Hub id) is shown by inspect when it reads as a
    record of strings, and left out otherwise: inspect still describes the file (exit 0), nothing raises."""
    from gguf import GGUFValueType

    from ropeconv.gguf_io import read_gguf, rewrite_gguf

    src = read_gguf(tiny_yarn_gguf)
    good = tmp_path / "good.gguf"
    rewrite_gguf(src, good, set_fields={"ropeconv.base_hub": (GGUFValueType.STRING, json.dumps(
        {"repo_id": "o/n", "revision": "main", "commit": "c" * 40}))})
    bad = tmp_path / "bad.gguf"
    rewrite_gguf(src, bad, set_fields={"ropeconv.base_hub": (GGUFValueType.STRING, HUBS[damage])})
    capsys.readouterr()
    assert run_cli("inspect", good, "--json") == 0
    assert json.loads(capsys.readouterr().out)["base_hub"] == {"repo_id": "o/n", "revision": "main",
                                                               "commit": "c" * 40}
    assert run_cli("inspect", bad) == 0
    shown = capsys.readouterr()
    assert "base (Hub)" not in shown.out and shown.err == "" and "ropeconv         yarn" in shown.out, shown.out
    assert run_cli("inspect", bad, "--json") == 0
    assert json.loads(capsys.readouterr().out)["base_hub"] is None


GGUF_SEED, GGUF_CASES = 1414, 300


def test_gguf_mutation_fuzz(tiny_yarn_gguf):
    summary = fuzz("gguf", tiny_yarn_gguf, GGUF_SEED, GGUF_CASES)
    assert summary["max_peak_rss_kib"] < 64 << 10, summary
