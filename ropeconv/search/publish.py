"""Where `search longrope` writes: FILE (the factors), FILE-stem.search.jsonl (the log) and FILE-stem.search.png
(the curve), through export.staging like every output: checked before the search starts (never over the base or
the --text, never over a file search did not write, never a link, FIFO or device), locked for the whole run, and
published together at the end — each staged beside its target, then renamed, the factors file last (its presence
means the search finished); a failure leaves every previous file as it was and nothing new behind.

`--force` replaces a previous search's files, each proven by its content: the factors file by its `_search`
record, the log by its records, the curve by the Software tag ropeconv writes into every plot.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ropeconv.errors import InputError
from ropeconv.eval import plots
from ropeconv.eval.cache import MAX_LINE_BYTES
from ropeconv.export.staging import Proof, check_files, overlap_refusal, staged_files, target_locks
from ropeconv.inputfile import open_regular, read_bytes

MAX_PROOF_BYTES = 256 << 20  # a file larger than this is not read to prove it search's: it is not
LOG_KEYS = frozenset({"phase", "generation", "origin", "factors", "ppl"})


def side_paths(out: Path) -> tuple[Path, Path]:
    """factors.json → factors.search.jsonl, factors.search.png."""
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.search.jsonl"), out.with_name(f"{stem}.search.png")


def targets(out: Path) -> list[tuple[Path, Proof]]:
    """(path, what proves a previous one search's), in publication order: the log, the curve, the factors."""
    log, curve = side_paths(out)
    return [(log, LOG_PROOF), (curve, CURVE_PROOF), (out, FACTORS_PROOF)]


def check(out: Path, force: bool, inputs: list[tuple[str, Path]]) -> None:
    """Every output path may be written: refused in one line before the search starts, else nothing."""
    for path in (out, *side_paths(out)):  # the -o the user gave first, its side files next
        reason = overlap_refusal(path, inputs)
        if reason:
            raise InputError(reason)
    check_files(targets(out)[::-1], force)


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """The whole run holds every output's lock: a second search to this -o (or to its side files) is refused."""
    with target_locks([path for path, _ in targets(out)]):
        yield


def refuse_link(cache: Path | None) -> None:
    """A fitness cache file is appended to as the search runs: never through a link or into a special file."""
    if cache is None or not os.path.lexists(cache):
        return
    if os.path.islink(cache) or not os.path.isfile(cache):
        raise InputError(f"cache {cache}: is a symbolic link or not a regular file; search appends its fitness "
                         "values only to a regular file it made — remove it (or give another --cache-dir)")


def publish(out: Path, force: bool, factors: dict, records: list[dict], draw_curve) -> None:
    """Stage the log, the curve (draw_curve(path)) and the factors file, then rename them into place together."""
    with staged_files(targets(out), force) as (log_tmp, curve_tmp, out_tmp):
        log_tmp.write_bytes("".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())
        draw_curve(curve_tmp)
        out_tmp.write_bytes((json.dumps(factors, indent=1, sort_keys=False) + "\n").encode())


# ----------------------------------------------------------------------------- proofs: search wrote it


def _bounded(path: Path) -> bytes | None:
    """The bytes of a regular file no larger than MAX_PROOF_BYTES, or None: then it is not proven search's."""
    try:
        return read_bytes(path, MAX_PROOF_BYTES)
    except InputError:
        return None


def _is_factors(path: Path) -> bool:
    data = _bounded(path)
    try:
        doc = json.loads(data) if data is not None else None
    except (ValueError, RecursionError):
        return False
    record = doc.get("_search") if isinstance(doc, dict) else None
    return isinstance(record, dict) and record.get("method") == "longrope" \
        and isinstance(record.get("ropeconv_version"), str)


def _is_log(path: Path) -> bool:
    """Every line a search record, read one line at a time (a search's own log reaches ~300 MB at the evaluation
    bound, past MAX_PROOF_BYTES), each line at most eval.cache's MAX_LINE_BYTES."""
    try:
        with open_regular(path) as fh:
            while line := fh.readline(MAX_LINE_BYTES + 1):
                if len(line) > MAX_LINE_BYTES:
                    return False
                record = json.loads(line)
                if not (isinstance(record, dict) and LOG_KEYS <= record.keys()):
                    return False
    except (InputError, OSError, ValueError, RecursionError):
        return False
    return True


FACTORS_PROOF = Proof("a factors file ropeconv search wrote", "no _search record", _is_factors)
LOG_PROOF = Proof("a search log ropeconv wrote", "not search records", _is_log)
CURVE_PROOF = plots.plot_proof()
