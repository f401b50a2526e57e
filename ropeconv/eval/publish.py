"""Where `eval passkey|ppl -o OUT` writes: OUT/NAME.json (the results document) and OUT/NAME.png (its plot),
published together through export.staging — staged beside their targets and renamed when the run is done, the
document last. OUT is made only then (or by the results cache, OUT/cache, when a first result is done), so a run
refused before any result (a --max-memory the model cannot run under) leaves no OUT. A rerun replaces its own
previous results, each proven by its content; never a file of the user's, a link or a special file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ropeconv.errors import InputError
from ropeconv.eval import plots
from ropeconv.export.staging import Proof, check_files, staged_files
from ropeconv.inputfile import read_bytes

KINDS = ("passkey", "ppl", "ruler")
MAX_RESULTS_BYTES = 256 << 20  # a larger file is not read to prove it eval's results: it is not


def results_paths(out: Path, name: str) -> tuple[Path, Path]:
    """OUT/NAME.json, OUT/NAME.png."""
    return out / f"{name}.json", out / f"{name}.png"


def _targets(out: Path, name: str) -> list[tuple[Path, Proof]]:
    """In publication order: the plot, then the document."""
    document, plot = results_paths(out, name)
    return [(plot, plots.plot_proof()), (document, RESULTS_PROOF)]


def check(out: Path, name: str) -> None:
    """Before the run: each file may be (re)placed (a previous eval's results are; nothing else is)."""
    check_files(_targets(out, name), True)


def publish(out: Path, name: str, doc: dict, draw: Callable[[Path], None]) -> None:
    """The plot (draw(path)) and the document, staged, then renamed into OUT."""
    with staged_files(_targets(out, name), True) as (plot_tmp, document_tmp):
        document_tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        draw(plot_tmp)


def _is_results(path: Path) -> bool:
    try:
        doc = json.loads(read_bytes(path, MAX_RESULTS_BYTES))
    except (InputError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("kind") in KINDS and isinstance(doc.get("settings"), dict)


RESULTS_PROOF = Proof("results ropeconv eval wrote", "no eval results document", _is_results)
