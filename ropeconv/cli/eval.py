"""ropeconv eval: passkey retrieval and perplexity, run in the model's own runtime (transformers, onnxruntime
or llama.cpp), with results cached so that an interrupted sweep resumes; RULER comes from cli.eval_ruler, on the
same group (cli.eval_common), which this module loads so that `ropeconv eval` has every command."""

from __future__ import annotations

import hashlib
from pathlib import Path

import click

from ropeconv.cli import eval_ruler  # noqa: F401  (registers `eval ruler` on the group)
from ropeconv.cli.eval_common import cache_dir_for, common_options, eval_group, publish_results, start
from ropeconv.errors import InputError
from ropeconv.eval import cache as cache_mod
from ropeconv.eval import passkey as pk
from ropeconv.eval import plots
from ropeconv.eval import ppl as ppl_mod
from ropeconv.eval import runtimes as rt

PASSKEY_EPILOG = """\b
Examples:
  ropeconv eval passkey out/ --lengths 4k,8k,12k,16k -o eval/
  ropeconv eval passkey out/model-Q8_0.gguf --lengths 11k --trials 3 -o eval/   # llama.cpp
  ropeconv eval passkey out/onnx/model.onnx --lengths 2k,4k --depths 0,0.25,0.5,0.75,1 --trials 2
  ropeconv eval passkey ./SmolLM2-135M --lengths 2k,4k --runtime hf --json > base.json
\b
Lengths: k = 1024 tokens (4k = 4096); the prompt is fitted to each length in the runtime's own tokenizer.
Results are appended to a cache as each trial finishes (OUT/cache/, or --cache-dir): rerunning the same
command skips the trials already done.
"""

PPL_EPILOG = """\b
Examples:
  ropeconv eval ppl ./SmolLM2-135M out/ --text book.txt --lengths 1k,2k,4k,8k -o eval/   # base vs extended
  ropeconv eval ppl yarn/x.gguf pi/x.gguf --text book.txt --lengths 4k,8k --stride 256 -o eval/
  ropeconv eval ppl out/onnx/model.onnx --text book.txt --lengths 2k --json
\b
Without --stride each length scores one window at the start of the text (YaRN's --truncate); with it,
a sliding window scores only the tokens new to each window, and PPL = exp(mean of window NLLs).
"""


def _pct(x) -> str:
    return "—" if x is None else f"{x:.0%}"


# ------------------------------------------------------------------------------------------ passkey


@eval_group.command(epilog=PASSKEY_EPILOG)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--lengths", required=True, help="prompt lengths in tokens, e.g. 4k,8k,12k,16k")
@click.option("--trials", type=int, default=10, show_default=True, help="trials per length (per depth with a grid)")
@click.option("--depths", default="random", show_default=True,
              help="'random' (uniform per trial) or a grid of fractions, e.g. 0,0.25,0.5,0.75,1")
@click.option("--seed", type=int, default=0, show_default=True, help="keys and depths come from this seed")
@common_options
def passkey(model, lengths, trials, depths, seed, runtime, device, max_memory, out, cache_dir, as_json, quiet) -> int:
    """Passkey retrieval (YaRN/LongLoRA template): a 1–50000 key hidden in filler at some depth, greedy
    answer, hit when the first integer of the answer is the key. Prints accuracy per length and depth."""
    # every check before anything is written
    length_list = pk.parse_lengths(lengths)
    depth_grid = pk.parse_depths(depths)
    if trials < 1:
        raise InputError("--trials must be at least 1")
    run = start("passkey", [model], runtime, out, device, max_memory, quiet)
    (ref,), dev, placement, progress = run.refs, run.device, run.placement, run.progress
    with rt.open_runtime(ref, dev, placement) as runtime_:
        template = len(runtime_.tokenize(pk.build_prompt(0, 0.5, pk.KEY_MAX).text))
        if template > length_list[0]:
            raise InputError(f"--lengths: {length_list[0]} tokens is shorter than the passkey template alone "
                             f"({template} tokens in this tokenizer)")
        key = {"kind": "passkey", "model_hash": rt.model_hash(ref), "runtime": ref.runtime, "device": dev.type,
               "seed": seed, "depths": depth_grid or "random", "template": pk.TEMPLATE,
               "max_new_tokens": pk.MAX_NEW_TOKENS}
        cache = cache_mod.ResultCache(cache_dir_for(out, cache_dir), "passkey", key,
                                      check=lambda r: cache_mod.fields_problem(r, pk.RECORD_FIELDS))
        specs = pk.trial_specs(length_list, trials, depth_grid)
        done = cache.done()
        cached = sum(s.id in done for s in specs)
        progress.note(f"passkey: {ref.given} in {ref.runtime_name} ({dev.type}), {len(specs)} trials"
                      + (f", {cached} from the cache {cache.path}" if cached else ""))
        records = []
        for n, spec in enumerate(specs, 1):
            record = cache.get(spec.id)
            if record is None:
                record = pk.run_trial(runtime_, spec, seed, depth_grid)
                cache.add(spec.id, record)
                progress.note(f"  trial {n}/{len(specs)}: length {spec.length} ({record['tokens']} tokens), "
                              f"depth {record['depth']:.2f}, key {record['key']} → {record['output']!r} "
                              f"{'hit' if record['hit'] else 'miss'}")
            records.append(record)
    summary = pk.summarize(records, length_list, depth_grid)
    doc = {"kind": "passkey", **rt.describe(ref), "model_hash": key["model_hash"], "device": dev.type,
           "settings": {"lengths": length_list, "trials": trials, "depths": depth_grid or "random", "seed": seed,
                        "max_new_tokens": pk.MAX_NEW_TOKENS, "template": pk.TEMPLATE,
                        "length_tolerance": {str(L): pk.tolerance(L) for L in length_list},
                        "scorer": "first \\d+ of the greedy continuation == key (as integers)"},
           "summary": summary, "trials": records}
    publish_results(doc, out, "passkey", lambda png: plots.passkey_heatmap(
        summary, length_list, f"passkey: {ref.given.name} ({ref.runtime_name})", png), _passkey_table, as_json)
    return 0


def _passkey_table(doc: dict) -> str:
    s = doc["summary"]
    depth_labels = list(dict.fromkeys(c["depth"] for c in s["per_length_depth"]))
    head = f"passkey  {doc['model']}  ({doc['runtime']}, {doc['device']}, seed {doc['settings']['seed']})"
    cols = ["length", "tokens", "trials", "accuracy"] + [f"d={d}" for d in depth_labels]
    rows = [cols]
    for row in s["per_length"]:
        cells = {c["depth"]: c for c in s["per_length_depth"] if c["length"] == row["length"]}
        rows.append([str(row["length"]), f"{row['mean_tokens']:.0f}", str(row["trials"]), _pct(row["accuracy"])]
                    + [_pct(cells[d]["accuracy"]) for d in depth_labels])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([head, *lines])


# ---------------------------------------------------------------------------------------------- ppl


def _ppl_text(path: Path, longest: int, stride: int | None) -> str:
    """--text as eval ppl reads it: a single pass scores the first window, so only the start the longest window
    needs is read (eval.text.text_bytes); a sliding window (--stride) scores the whole text, refused above
    MAX_TEXT_BYTES rather than cut."""
    from ropeconv.eval.text import MAX_TEXT_BYTES, read_text, text_bytes

    text = read_text(path, MAX_TEXT_BYTES if stride else text_bytes(longest, 1))
    if stride and not text.complete:
        raise InputError(f"--text {path}: {text.file_bytes} bytes; with --stride eval ppl scores the whole text, "
                         f"at most {MAX_TEXT_BYTES >> 20} MiB — give a shorter text")
    return text.text


@eval_group.command(epilog=PPL_EPILOG)
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--text", "text_path", required=True, type=click.Path(path_type=Path), help="UTF-8 text to score")
@click.option("--lengths", required=True, help="context lengths in tokens, e.g. 1k,2k,4k")
@click.option("--stride", type=int, help="sliding-window stride (YaRN uses 256); default: one window per length")
@common_options
def ppl(models, text_path, lengths, stride, runtime, device, max_memory, out, cache_dir, as_json, quiet) -> int:
    """Perplexity of each MODEL on --text at each length (§15); several MODELs share one plot."""
    length_list = pk.parse_lengths(lengths)
    if stride is not None and stride < 1:
        raise InputError("--stride must be positive")
    text = _ppl_text(text_path, length_list[-1], stride)
    run = start("ppl", models, runtime, out, device, max_memory, quiet, text_path)
    refs, dev, placement, progress = run.refs, run.device, run.placement, run.progress
    labels = _labels(refs)
    text_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()

    # tokenizers first (cheap), so a text too short for any model fails before any output exists
    opened = []
    try:
        for ref, label in zip(refs, labels):
            runtime_ = rt.open_runtime(ref, dev, placement)
            opened.append(runtime_)
            ids = runtime_.tokenize_plain(text)
            ppl_mod.check_text(len(ids), length_list[-1], runtime_.bos_id, label)
            ppl_mod.check_stride(stride, length_list[0], runtime_.bos_id)
        results = []
        for ref, label, runtime_ in zip(refs, labels, opened):
            ids = runtime_.tokenize_plain(text)
            key = {"kind": "ppl", "model_hash": rt.model_hash(ref), "runtime": ref.runtime, "device": dev.type,
                   "text_sha256": text_sha, "stride": stride, "protocol": "yarn-v1"}
            cache = cache_mod.ResultCache(cache_dir_for(out, cache_dir), "ppl", key,
                                          check=lambda r: cache_mod.fields_problem(r, ppl_mod.RECORD_FIELDS))
            for L in length_list:
                record = cache.get(str(L))
                if record is None:
                    def on_window(i, n, L=L, label=label):
                        progress.step(f"  ppl {label} length {L}, windows", i, n, unit="windows")
                    record = ppl_mod.perplexity(ids, L, runtime_.token_logprobs, runtime_.bos_id, stride, on_window)
                    cache.add(str(L), record)
                else:
                    progress.note(f"  ppl {label} length {L}: from the cache")
                results.append({"model": str(ref.given), "label": label, "runtime": ref.runtime_name,
                                "model_hash": key["model_hash"], **record})
            runtime_.close()
    finally:
        for runtime_ in opened:
            runtime_.close()
    doc = {"kind": "ppl", "text": str(text_path), "text_sha256": text_sha, "device": dev.type,
           "settings": {"lengths": length_list, "stride": stride, "mode": ppl_mod.mode_name(stride),
                        "ppl": "exp(mean over windows of the window's mean NLL) (nll_tokens: token-weighted)"},
           "results": results}
    publish_results(doc, out, "ppl", lambda png: plots.ppl_curves(
        results, png, f"perplexity on {text_path.name} ({ppl_mod.mode_name(stride)})"), _ppl_table, as_json)
    return 0


def _labels(refs) -> list[str]:
    names = [r.given.name or str(r.given) for r in refs]
    if len(set(names)) == len(names):
        return names
    return [str(r.given) for r in refs]


def _ppl_table(doc: dict) -> str:
    rows = [["model", "runtime", "length", "tokens", "nll", "ppl"]]
    for r in doc["results"]:
        rows.append([r["label"], r["runtime"], str(r["length"]), str(r["tokens"]), f"{r['nll']:.4f}",
                     f"{r['ppl']:.3f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    return "\n".join([f"perplexity on {doc['text']}: {doc['settings']['mode']}", *lines])
