"""ropeconv eval ruler: RULER's synthetic tasks (ropeconv.eval.ruler) in the model's own runtime, cached per trial
like passkey; a task × length table, ruler.json and ruler.png, and with --into-card the table in an output's card.

This module registers `ruler` on the eval group (cli.eval_common, with the options and checks every eval command
shares); cli.eval loads it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click

from ropeconv import jsontext
from ropeconv.cli.eval_common import cache_dir_for, common_options, eval_group, publish_results, start
from ropeconv.errors import InputError
from ropeconv.eval import cache as cache_mod
from ropeconv.eval import passkey as pk
from ropeconv.eval import plots
from ropeconv.eval import ruler as ruler_mod
from ropeconv.eval import runtimes as rt

RULER_EPILOG = """\b
Examples:
  ropeconv eval ruler out/smollm2-135m-Q8_0.gguf --lengths 4k,8k,16k -o eval/
  ropeconv eval ruler out/ --lengths 8k --tasks niah_single,vt --trials 3 --seed 1 --json
  ropeconv eval ruler out/model-Q8_0.gguf --lengths 8k,16k --into-card out/   # the table in out/README.md
\b
Tasks: niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe, fwe (default: all), RULER's
templates generated from --seed; a length holds prompt and answer (the prompt is fitted to the length minus the
task's max_new_tokens in the runtime's own tokenizer). Score: RULER's string_match_all, the share of the
expected answers found in the greedy continuation, in %. Each finished trial is cached like passkey's.
"""

CARD = "README.md"
MANIFEST = "manifest.json"
SECTION = "## RULER"


@eval_group.command(epilog=RULER_EPILOG)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--lengths", required=True, help="sequence lengths in tokens (prompt + answer), e.g. 4k,8k,16k")
@click.option("--tasks", default="all", show_default=True,
              help="comma-separated: niah_single,niah_multikey,niah_multivalue,niah_multiquery,vt,cwe,fwe")
@click.option("--trials", type=int, default=5, show_default=True, help="trials per task and length")
@click.option("--seed", type=int, default=0, show_default=True, help="every prompt comes from this seed")
@click.option("--into-card", "into_card", type=click.Path(path_type=Path),
              help="a ropeconv output folder: write the table into its README.md (## RULER) and its manifest")
@common_options
def ruler(model, lengths, tasks, trials, seed, into_card, runtime, device, max_memory, out, cache_dir, as_json,
          quiet) -> int:
    """RULER's synthetic tasks (needle-in-a-haystack variants, variable tracking, common and frequent words),
    generated from a seed and scored with string_match_all. Prints the score per task and length."""
    length_list = pk.parse_lengths(lengths)
    task_list = ruler_mod.parse_tasks(tasks)
    if trials < 1:
        raise InputError("--trials must be at least 1")
    if into_card is not None:
        card_check(into_card, out)
    run = start("ruler", [model], runtime, out, device, max_memory, quiet)
    (ref,), dev, placement, progress = run.refs, run.device, run.placement, run.progress
    model_hash = _model_hash(ref)
    with rt.open_runtime(ref, dev, placement) as runtime_:
        for task in task_list:  # every template fits the shortest length before any trial runs
            _template_fits(runtime_, task, length_list[0])
        caches = {task: cache_mod.ResultCache(
            cache_dir_for(out, cache_dir), "ruler",
            {"kind": "ruler", "task": task, "model_hash": model_hash, "runtime": ref.runtime, "device": dev.type,
             "seed": seed, "template": ruler_mod.TEMPLATE, "max_new_tokens": ruler_mod.MAX_NEW_TOKENS[task]},
            check=lambda r: cache_mod.fields_problem(r, ruler_mod.RECORD_FIELDS)) for task in task_list}
        specs = ruler_mod.trial_specs(task_list, length_list, trials)
        cached = sum(s.id in caches[s.task].done() for s in specs)
        progress.note(f"ruler: {ref.given} in {ref.runtime_name} ({dev.type}), {len(task_list)} tasks × "
                      f"{len(length_list)} lengths × {trials} trials = {len(specs)}"
                      + (f", {cached} from the cache" if cached else ""))
        records = []
        for n, spec in enumerate(specs, 1):
            record = caches[spec.task].get(spec.id)
            if record is None:
                record = ruler_mod.run_trial(runtime_, spec, seed)
                caches[spec.task].add(spec.id, record)
                progress.note(f"  trial {n}/{len(specs)}: {spec.task} length {spec.length} ({record['tokens']} "
                              f"tokens) → {record['output'][:60]!r} {record['score']:.0%}")
            records.append(record)
    summary = ruler_mod.summarize(records, task_list, length_list)
    doc = {"kind": "ruler", **rt.describe(ref), "model_hash": model_hash, "device": dev.type,
           "settings": {"lengths": length_list, "tasks": task_list, "trials": trials, "seed": seed,
                        "template": ruler_mod.TEMPLATE,
                        "max_new_tokens": {t: ruler_mod.MAX_NEW_TOKENS[t] for t in task_list},
                        "prompt_tokens": "≤ length − max_new_tokens, within max(8, 0.5 %, two haystack units) below",
                        "scorer": "string_match_all: the share of the answers found in the continuation "
                                  "(case-insensitive)"},
           "summary": summary, "trials": records}
    publish_results(doc, out, "ruler", lambda png: plots.ruler_heatmap(
        summary, task_list, length_list, f"RULER: {ref.given.name} ({ref.runtime_name})", png), ruler_table, as_json)
    if into_card is not None:
        write_card(into_card, doc)
        if not quiet and not as_json:
            click.echo(f"wrote the RULER table into {into_card / CARD}", err=True)
    return 0


def _template_fits(runtime_, task: str, length: int) -> None:
    sample = ruler_mod.make(task, ruler_mod.trial_seed(0, task, length, 0), 0, length)
    n = len(runtime_.tokenize(sample.text))
    if n > ruler_mod.budget(task, length):
        raise InputError(f"--lengths: {length} tokens is too short for RULER's {task} template ({n} tokens in "
                         f"this tokenizer, and {ruler_mod.MAX_NEW_TOKENS[task]} kept for the answer)")


def _model_hash(ref: rt.ModelRef) -> str:
    """rt.model_hash, blind to the card's line in an output's manifest: --into-card rewrites README.md and its
    manifest entry, and the model evaluated is the same (its cached trials stay valid)."""
    from ropeconv.manifest import read_manifest

    homes = (ref.path,) if ref.path.is_dir() else (ref.path.parent, ref.path.parent.parent)
    for directory in homes:
        if (directory / MANIFEST).is_file():
            data = read_manifest(directory)
            if data is None or not isinstance(data.get("files"), dict):
                break
            files = {k: v for k, v in data["files"].items() if k != CARD}
            body = json.dumps({**data, "files": files}, sort_keys=True, default=str)
            where = str(ref.path.resolve().relative_to(directory.resolve()))
            return hashlib.sha256(f"{ref.runtime}\0{where}\0{body}".encode()).hexdigest()
    return rt.model_hash(ref)


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def ruler_table(doc: dict) -> str:
    """Tasks down, lengths across, scores in % (RULER's table), the mean of the tasks last."""
    s, settings = doc["summary"], doc["settings"]
    head = (f"RULER  {doc['model']}  ({doc['runtime']}, {doc['device']}, seed {settings['seed']}, "
            f"{settings['trials']} trials per cell; string_match_all, %)")
    cells = {(c["task"], c["length"]): c for c in s["per_task_length"]}
    rows = [["task", *(str(L) for L in settings["lengths"])]]
    for task in settings["tasks"]:
        rows.append([task, *(_pct(cells[task, L]["score"]) for L in settings["lengths"])])
    rows.append(["average", *(_pct(c["score"]) for c in s["per_length"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    return "\n".join([head, *lines])


# ------------------------------------------------------------------------------------------ --into-card


def card_section(doc: dict) -> str:
    """The "## RULER" section of a model card: what was run, and the table in Markdown."""
    s, settings = doc["summary"], doc["settings"]
    cells = {(c["task"], c["length"]): c for c in s["per_task_length"]}
    lengths = settings["lengths"]
    lines = [SECTION, "",
             f"RULER's synthetic tasks ([Hsieh et al., 2024](https://arxiv.org/abs/2404.06654), "
             f"[NVIDIA/RULER](https://github.com/NVIDIA/RULER)), generated by `ropeconv eval ruler` "
             f"(template {settings['template']}, seed {settings['seed']}, {settings['trials']} trials per cell) "
             f"and run on `{Path(doc['file']).name}` in {doc['runtime']} ({doc['device']}). Score: RULER's "
             "string_match_all, the share of the expected answers found in the greedy continuation, in %.", "",
             "| task | " + " | ".join(str(L) for L in lengths) + " |",
             "|---|" + "---:|" * len(lengths)]
    for task in settings["tasks"]:
        lines.append(f"| {task} | " + " | ".join(_pct(cells[task, L]["score"]) for L in lengths) + " |")
    lines.append("| **average** | " + " | ".join(_pct(c["score"]) for c in s["per_length"]) + " |")
    return "\n".join(lines) + "\n"


def replace_section(card: str, section: str) -> str:
    """card with its "## RULER" section (to the next heading of level 1 or 2, or the end) replaced by section, or
    section appended when it has none."""
    lines = card.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        return card.rstrip("\n") + "\n\n" + section if card.strip() else section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("# ", "## "))), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def _listed_card(out: Path):
    """(the output's manifest, README.md's record in it); InputError when OUT is not an output whose card is as
    its manifest records."""
    from ropeconv.manifest import load_manifest, sha256_file

    if not out.is_dir():
        raise InputError(f"--into-card {out}: not a folder (a ropeconv output folder holding {CARD})")
    manifest = load_manifest(out)
    record = manifest.files.get(CARD)
    if record is None:
        raise InputError(f"--into-card {out}: its manifest.json lists no {CARD} (not an output with a model card)")
    if sha256_file(out / CARD) != record.sha256:
        raise InputError(f"--into-card {out}: {CARD} differs from what manifest.json records; ropeconv will not "
                         "record edits it did not make — restore it or run `ropeconv verify`")
    return manifest, record


def _card_proof():
    from ropeconv.export.staging import Proof

    def holds(path: Path) -> bool:
        try:
            _listed_card(path.parent)
        except (InputError, OSError):
            return False
        return True

    return Proof("the model card its manifest records", "not the README.md its manifest.json records", holds)


def _manifest_proof():
    from ropeconv.export.staging import Proof
    from ropeconv.manifest import find_manifest

    def holds(path: Path) -> bool:
        try:
            return find_manifest(path.parent) is not None
        except (InputError, OSError, ValueError):
            return False

    return Proof("a ropeconv manifest", "no ropeconv manifest", holds)


def card_check(out: Path, results: Path | None = None) -> None:
    """Before the run: OUT's card and manifest may be rewritten (both proven ropeconv's, the card unchanged), and
    -o (results) does not put files into OUT that its manifest would not list."""
    from ropeconv.export.staging import check_files, overlap_refusal

    _listed_card(out)
    reason = None if results is None else overlap_refusal(results, [("--into-card output", out)])
    if reason:
        raise InputError(f"-o {reason}")
    check_files([(out / CARD, _card_proof()), (out / MANIFEST, _manifest_proof())], True)


def write_card(out: Path, doc: dict) -> None:
    """README.md with the "## RULER" section replaced, and manifest.json with README.md's sha256 and size, staged
    and renamed together (export.staging.staged_files): a failure leaves the old card and manifest."""
    from ropeconv.export.staging import staged_files
    from ropeconv.manifest import MANIFEST_NAME, load_manifest

    _listed_card(out)
    data = dict(load_manifest(out).data)
    card = (out / CARD).read_text(encoding="utf-8")
    new_card = replace_section(card, card_section(doc)).encode("utf-8")
    files = dict(data["files"])
    files[CARD] = {**files[CARD], "sha256": hashlib.sha256(new_card).hexdigest(), "bytes": len(new_card)}
    data["files"] = files
    manifest_text = jsontext.dumps(data, MANIFEST_NAME, indent=2, sort_keys=True) + "\n"
    with staged_files([(out / CARD, _card_proof()), (out / MANIFEST, _manifest_proof())], True) as (card_tmp,
                                                                                                   manifest_tmp):
        card_tmp.write_bytes(new_card)
        manifest_tmp.write_text(manifest_text, encoding="utf-8")
