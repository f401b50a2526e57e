"""Seeded mutation fuzz of ropeconv's readers, one forked child per mutant under a memory cap.

Run by tests/hostile/test_gguf.py and tests/hostile/test_weights.py in a fresh interpreter (no torch: the children
fork from a small process):

    python tests/hostile/fuzz_worker.py gguf BASE.gguf --seed 1414 --cases 300 [--only 17]
    python tests/hostile/fuzz_worker.py checkpoint BASE_DIR --seed 1415 --cases 200 [--only 17]
    python tests/hostile/fuzz_worker.py files A.gguf B.gguf … [--budget-mib 32]     (crafted files, no mutation)

Every mutant must either be accepted or refused with ropeconv's InputError — through the reader, the CLI
(`inspect`: exit 0, or exit 2 with exactly one `ropeconv: error:` line and no traceback) and a planning
step (retrofit planning for a GGUF, extend's prepare() for a checkpoint). Anything else — another
exception, a MemoryError under the cap, a hang past the time limit, a crash — is a failure, reported
with the seed and the mutant's index so `--only INDEX` replays it. Prints one JSON object per case, then a
summary line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

MEMORY_BUDGET_BYTES = 256 * 1024 * 1024  # address space a case may add on top of the mapped file
CASE_SECONDS = 20

# ---------------------------------------------------------------------------------------------- GGUF

_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_layout(raw: bytes) -> dict[str, list[int]]:
    """Where each kind of field sits in a valid GGUF (written independently of ropeconv's reader)."""
    spots: dict[str, list[int]] = {"count": [], "length": [], "type": [], "dims": [], "shape": [], "offset": [],
                                   "ggml_type": []}
    spots["count"] += [8, 16]  # n_tensors, n_kv
    n_tensors, n_kv = struct.unpack_from("<QQ", raw, 8)
    pos = 24

    def string(pos: int) -> int:
        spots["length"].append(pos)
        (n,) = struct.unpack_from("<Q", raw, pos)
        return pos + 8 + n

    def value(pos: int, vtype: int) -> int:
        if vtype == 8:
            return string(pos)
        return pos + _SCALAR_BYTES[vtype]

    for _ in range(n_kv):
        key_at = pos
        pos = string(pos)
        key = raw[key_at + 8:pos]
        spots["type"].append(pos)
        (vtype,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if vtype == 9:
            spots["type"].append(pos)
            (itype,) = struct.unpack_from("<I", raw, pos)
            spots["count"].append(pos + 4)
            (n,) = struct.unpack_from("<Q", raw, pos + 4)
            pos += 12
            for _ in range(n):
                pos = value(pos, itype)
        else:
            if key == b"ropeconv.plan":
                spots["plan"] = [pos + 8, pos + 8 + struct.unpack_from("<Q", raw, pos)[0]]
            pos = value(pos, vtype)
    for _ in range(n_tensors):
        pos = string(pos)
        spots["dims"].append(pos)
        (n_dims,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        spots["shape"] += [pos + 8 * i for i in range(n_dims)]
        pos += 8 * n_dims
        spots["ggml_type"].append(pos)
        spots["offset"].append(pos + 4)
        pos += 12
    spots["header_end"] = [pos]
    return spots


_HUGE = (2**64 - 1, 2**63, 2**63 - 1, 2**62, 2**32, 2**32 - 1, 2**31, 10**12)


def mutate_gguf(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    spots = gguf_layout(raw)
    end = spots["header_end"][0]
    data = bytearray(raw)
    kind = rng.choice(["flip", "flip", "bytes", "truncate", "huge", "huge", "near", "type", "splice", "zero", "plan"])
    if kind == "plan" and "plan" in spots:  # the recorded plan's JSON damaged in place (same length)
        a, b = spots["plan"]
        text = bytearray(data[a:b])
        how = rng.choice(["chars", "deep", "list", "object", "nan"])
        if how == "chars":
            for _ in range(rng.randint(1, 6)):
                text[rng.randrange(len(text))] = rng.choice(b'[]{}",:0123456789-eE.NaInfty ')
        else:
            body = {"deep": b"[" * (len(text) // 2), "list": b"[1,2]", "object": b"{}",
                    "nan": b'{"kind":"rope","theta":NaN}'}[how]
            text = bytearray(body.ljust(len(text)))
        data[a:b] = text
        return bytes(data), f"ropeconv.plan {how}"
    if kind == "flip":  # a few bit flips in the header
        flips = [rng.randrange(end) for _ in range(rng.randint(1, 8))]
        for pos in flips:
            data[pos] ^= 1 << rng.randrange(8)
        return bytes(data), f"flip bits at {flips}"
    if kind == "bytes":  # random bytes over a header stretch
        pos, n = rng.randrange(end), rng.randint(1, 16)
        data[pos:pos + n] = bytes(rng.randrange(256) for _ in range(n))
        return bytes(data[:len(raw)]), f"random {n} bytes at {pos}"
    if kind == "truncate":
        cut = rng.randrange(end + 64) if rng.random() < 0.8 else rng.randrange(len(raw))
        return bytes(data[:cut]), f"truncate at {cut}"
    if kind in ("huge", "near"):  # a count, length or dimension made absurd, or just past what fits
        where = rng.choice(["count", "length", "shape", "offset"])
        pos = rng.choice(spots[where])
        old = struct.unpack_from("<Q", data, pos)[0]
        new = rng.choice(_HUGE) if kind == "huge" else max(0, old + rng.choice((-2, -1, 1, 2, len(raw) - pos)))
        struct.pack_into("<Q", data, pos, new % 2**64)
        return bytes(data), f"{where} at {pos}: {old} -> {new}"
    if kind == "type":  # a value type, item type, n_dims or ggml type made wrong
        where = rng.choice(["type", "dims", "ggml_type"])
        pos = rng.choice(spots[where])
        new = rng.choice((0, 1, 4, 5, 6, 7, 8, 9, 10, 12, 13, 31, 2**31, 2**32 - 1))
        struct.pack_into("<I", data, pos, new)
        return bytes(data), f"{where} at {pos} -> {new}"
    if kind == "splice":  # a header stretch duplicated or dropped
        a = rng.randrange(end)
        b = min(end, a + rng.randint(1, 64))
        out = data[:a] + data[a:b] + data[a:] if rng.random() < 0.5 else data[:a] + data[b:]
        return bytes(out), f"splice {a}:{b}"
    pos, n = rng.randrange(end), rng.randint(1, 32)
    data[pos:pos + n] = bytes(n)
    return bytes(data[:len(raw)]), f"zero {n} bytes at {pos}"


def check_gguf(path: Path) -> dict:
    from ropeconv.errors import InputError
    from ropeconv.gguf_io.reader import read_gguf

    outcome = {}
    try:
        src = read_gguf(path)
        outcome["read"] = f"ok ({len(src.fields)} keys, {len(src.tensors)} tensors)"
        del src  # its map of the file is released before the next reader maps it again
    except InputError as exc:
        outcome["read"] = f"refused: {exc}"
    outcome["inspect"] = run_cli("inspect", str(path))
    outcome["inspect_json"] = run_cli("inspect", str(path), "--json")
    outcome["plan"] = plan_retrofit(path)
    return outcome


def plan_retrofit(path: Path) -> str:
    from ropeconv.errors import InputError
    from ropeconv.extend.from_gguf import prepare as prepare_gguf
    from ropeconv.extend.job import ExtendJob
    from ropeconv.methods.base import ExtendRequest

    job = ExtendJob(base=path, method="yarn", request=ExtendRequest(factor=2.0), out=path.with_name("out.gguf"),
                    formats=("gguf",), rebase=True, verify=False)
    try:
        prepared = prepare_gguf(job)
        return f"ok ({prepared.plan.method} {prepared.plan.original_ctx} -> {prepared.plan.target_ctx})"
    except InputError as exc:
        return f"refused: {exc}"


def run_cli(*args: str) -> str:
    """The CLI in-process: 'ok', or 'refused: LINE' when it kept the bad-input contract; raises otherwise.
    Only `inspect` is registered (see main), so the children never import torch."""
    from ropeconv.cli.main import _run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = _run(list(args))
    lines = err.getvalue().splitlines()
    if rc == 0 and not lines:
        return "ok"
    if rc == 2 and len(lines) == 1 and lines[0].startswith("ropeconv: error: ") and "Traceback" not in lines[0]:
        return "refused: " + lines[0]
    raise AssertionError(f"{' '.join(args[:1])}: exit {rc}, stderr {err.getvalue()[:2000]!r}")


# ---------------------------------------------------------------------------------------------- checkpoint

_ODD_VALUES = (None, True, False, 0, -1, 1, 2**40, 2**64, 1e8, 0.5, -0.0, "64", "", [], [64], {}, {"a": 1},
               [[[[1]]]], 1e308, -1e308, "NaN", "__DEEP_5000__")


def _deep(n: int) -> str:
    """A marker that _expand turns into n nested lists (json.dumps itself cannot write them that deep)."""
    return f"__DEEP_{n}__"


def _expand(text: str) -> str:
    import re

    return re.sub(r'"__DEEP_(\d+)__"', lambda m: "[" * int(m.group(1)) + "1" + "]" * int(m.group(1)), text)


def mutate_config(cfg: dict, rng: random.Random) -> tuple[dict, str]:
    cfg = json.loads(json.dumps(cfg))
    kind = rng.choice(["value", "value", "value", "drop", "nest", "rope", "model_type"])
    keys = sorted(cfg)
    if kind == "value":
        key = rng.choice(keys)
        cfg[key] = rng.choice(_ODD_VALUES)
        return cfg, f"config {key} = {cfg[key]!r}"
    if kind == "drop":
        key = rng.choice(keys)
        del cfg[key]
        return cfg, f"config without {key}"
    if kind == "nest":
        key, depth = rng.choice(keys), rng.choice((10, 100, 1000, 100000))
        cfg[key] = _deep(depth)
        return cfg, f"config {key} nested {depth} deep"
    if kind == "rope":
        field = rng.choice(["rope_type", "factor", "original_max_position_embeddings", "rope_theta", "type"])
        value = rng.choice(_ODD_VALUES + ("yarn", "linear", "dynamic", 4.0))
        cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 2.0, field: value}
        return cfg, f"rope_scaling {field} = {value!r}"
    cfg["model_type"] = rng.choice((["llama"], {"llama": 1}, 1, None, "", "llama ", "LLAMA", "gpt2"))
    return cfg, f"model_type = {cfg['model_type']!r}"


def mutate_header(header: dict, rng: random.Random) -> tuple[dict, str]:
    header = json.loads(json.dumps(header))
    names = sorted(k for k in header if k != "__metadata__")
    name = rng.choice(names)
    entry = header[name]
    kind = rng.choice(["shape", "dtype", "offsets", "entry", "nest", "metadata", "drop"])
    if kind == "shape":
        i = rng.randrange(len(entry["shape"]))
        entry["shape"][i] = rng.choice((True, -1, 0, 2**63, 1.5, "64", None, [64], entry["shape"][i] + 1))
        what = entry["shape"]
    elif kind == "dtype":
        entry["dtype"] = rng.choice((["F32"], "F128", "f32", None, 32, "I64", "BF16", "F8_E4M3"))
        what = entry["dtype"]
    elif kind == "offsets":
        b, e = entry["data_offsets"]
        entry["data_offsets"] = rng.choice(([e, b], [-1, e], [b, e + 4], [b + 4, e + 4], [b, 2**64], [b], [b, e, 0],
                                            [True, e], [float(b), e], None, [b - 4, e - 4]))
        what = entry["data_offsets"]
    elif kind == "entry":
        header[name] = rng.choice(([], "x", None, 1, {}, {"dtype": "F32"}))
        what = header[name]
    elif kind == "nest":
        header[name] = _deep(rng.choice((100, 1000, 100000)))
        what = "deep"
    elif kind == "metadata":
        header["__metadata__"] = rng.choice(({"a": 1}, {"a": [1]}, [1], "x", {"format": None}, _deep(500)))
        what = "metadata"
    else:
        del header[name]
        what = "dropped"
    return header, f"header {name} {kind}: {str(what)[:60]}"


def write_checkpoint(base: Path, dst: Path, rng: random.Random) -> str:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(base, dst)
    if rng.random() < 0.5:
        cfg = json.loads((base / "config.json").read_text())
        cfg, what = mutate_config(cfg, rng)
        text = _expand(json.dumps(cfg))
        if rng.random() < 0.1:  # literals Python writes and JSON does not have
            key = rng.choice(sorted(cfg) or ["x"])
            text = text[:-1] + f', "{key}_x": ' + rng.choice(("NaN", "Infinity", "-Infinity", "1e400")) + "}"
            what += " + non-finite literal"
        (dst / "config.json").write_text(text)
        return what
    weights = dst / "model.safetensors"
    raw = weights.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n])
    header, what = mutate_header(header, rng)
    text = _expand(json.dumps(header, separators=(",", ":"))).encode()
    if rng.random() < 0.1:
        text = text[:-1] + b',"__x":' + rng.choice((b"NaN", b"Infinity", b"1e999")) + b"}"
        what += " + non-finite literal"
    text += b" " * (-len(text) % 8)
    length = len(text) if rng.random() < 0.9 else rng.choice((len(text) + 8, 2**63, len(raw) * 2, 0))
    weights.write_bytes(struct.pack("<Q", length) + text + raw[8 + n:])
    return what + ("" if length == len(text) else f", header length {length}")


def check_checkpoint(path: Path) -> dict:
    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.errors import InputError
    from ropeconv.extend.from_hf import prepare
    from ropeconv.extend.job import ExtendJob
    from ropeconv.methods.base import ExtendRequest

    outcome = {}
    try:
        ckpt = load_checkpoint(path)
        outcome["load"] = f"ok ({ckpt.arch.model_type}, {len(ckpt.tensors)} tensors)"
    except InputError as exc:
        outcome["load"] = f"refused: {exc}"
    outcome["inspect"] = run_cli("inspect", str(path), "--json")
    job = ExtendJob(base=path, method="linear", request=ExtendRequest(factor=2.0), out=path.with_name("out"),
                    rebase=True, verify=False)
    try:
        prepared = prepare(job)
        outcome["prepare"] = f"ok ({prepared.plan.method})"
    except InputError as exc:
        outcome["prepare"] = f"refused: {exc}"
    return outcome


# ---------------------------------------------------------------------------------------------- the harness


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_case(target, path: Path, file_bytes: int, budget: int = MEMORY_BUDGET_BYTES) -> dict:
    """Fork; the child runs `target(path)` under RLIMIT_AS and a time limit and reports through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        result: dict
        try:
            cap = _vm_kib("VmSize") * 1024 + file_bytes + budget
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            signal.alarm(CASE_SECONDS)
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # restart the peak-RSS count
            rss0 = _vm_kib("VmRSS")
            outcome = target(path)
            result = {"status": "ok", "outcome": outcome, "peak_kib": _vm_kib("VmHWM") - rss0}
        except BaseException as exc:  # noqa: BLE001 - everything that escapes is the finding
            result = {"status": "FAIL", "error": f"{type(exc).__name__}: {str(exc)[:500]}",
                      "traceback": traceback.format_exc()[-3000:]}
        with os.fdopen(write_end, "w") as w:
            w.write(json.dumps(result))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as r:
        text = r.read()
    _, status = os.waitpid(pid, 0)
    if not text:
        return {"status": "FAIL", "error": f"child died (wait status {status}; signal {os.WSTATUS(status) if hasattr(os, 'WSTATUS') else status & 0x7F})"}
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["gguf", "checkpoint", "files"])
    parser.add_argument("base", type=Path, nargs="+")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-mib", type=int, default=MEMORY_BUDGET_BYTES >> 20)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--only", type=int, default=None)
    args = parser.parse_args(argv)

    # imported before forking, so each child starts warm and its memory cap measures the case alone
    import ropeconv.checkpoint.gguf_scheme  # noqa: F401
    import ropeconv.cli.inspect  # noqa: F401
    import ropeconv.cli.main  # noqa: F401
    import ropeconv.extend.from_gguf  # noqa: F401
    import ropeconv.extend.from_hf  # noqa: F401
    from ropeconv.cli.inspect import inspect
    from ropeconv.cli.main import cli

    cli.add_command(inspect)  # the one command the checks drive (all of them would import torch, ~4 s per run)
    budget = args.budget_mib << 20
    if args.mode == "files":  # crafted files, as they are
        failures = 0
        for index, path in enumerate(args.base):
            result = run_case(check_gguf, path, path.stat().st_size, budget)
            result.update(index=index, mutation=f"crafted {path.name}", file_bytes=path.stat().st_size)
            failures += result["status"] != "ok"
            print(json.dumps(result), flush=True)
        return 1 if failures else 0
    work = Path(tempfile.mkdtemp(prefix="ropeconv-fuzz-"))
    started = time.monotonic()
    base = args.base[0]
    # the unmutated base once in this process: every module the checks import lazily is then loaded before
    # the children fork (each would import it again), and the base itself must pass
    (check_gguf if args.mode == "gguf" else check_checkpoint)(base)
    failures = refused = accepted = 0
    peak = 0
    try:
        raw = base.read_bytes() if args.mode == "gguf" else b""
        for index in range(args.cases):
            rng = random.Random(f"{args.seed}:{index}")  # each mutant reproducible on its own
            if args.only is not None and index != args.only:
                continue
            if args.mode == "gguf":
                data, what = mutate_gguf(raw, rng)
                path = work / "mutant.gguf"
                path.write_bytes(data)
                result = run_case(check_gguf, path, len(data), budget)
            else:
                path = work / "mutant"
                what = write_checkpoint(base, path, rng)
                size = sum(p.stat().st_size for p in path.iterdir())
                result = run_case(check_checkpoint, path, size, budget)
            result.update(seed=args.seed, index=index, mutation=what)
            if result["status"] != "ok":
                failures += 1
            else:
                peak = max(peak, result["peak_kib"])
                if any(str(v).startswith("refused") for v in result["outcome"].values()):
                    refused += 1
                else:
                    accepted += 1
            print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"summary": True, "mode": args.mode, "seed": args.seed, "cases": failures + refused + accepted,
                      "refused": refused, "accepted": accepted, "failures": failures, "max_peak_rss_kib": peak,
                      "seconds": round(time.monotonic() - started, 1)}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
