"""What every `ropeconv eval` command shares: the group, the options (--runtime, --device, --max-memory, -o,
--cache-dir, --json, -q), the checks every run makes before any work (start: the models resolved in their runtime,
-o, the plot library, the device, --max-memory against it) and how results are published. The commands live in
cli.eval (passkey, ppl) and cli.eval_ruler (ruler), both on this group; cli.eval loads them all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ropeconv.cli.options import emit_json
from ropeconv.cli.report import echo_published
from ropeconv.errors import InputError
from ropeconv.eval import cache as cache_mod
from ropeconv.eval import plots
from ropeconv.eval import runtimes as rt
from ropeconv.progress import Progress


class RuntimeChoice(click.Choice):
    """--runtime's choices as the format registry stands when they are read (eval.runtimes.kinds): a format
    registered at run time is a choice."""

    def __init__(self) -> None:
        super().__init__(list(rt.runtime_choices()))

    @property
    def choices(self):
        return tuple(rt.runtime_choices())

    @choices.setter
    def choices(self, _value) -> None:
        pass


def device_option(f):
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                        help="where transformers/onnxruntime/llama.cpp run")(f)


def common_options(f):
    for decorator in reversed([
        click.option("--runtime", type=RuntimeChoice(), default="auto", show_default=True,
                     help="auto: from the path (.gguf → llama.cpp, .onnx or onnx/ → onnxruntime, else transformers); "
                     "mlx and vllm (a safetensors folder served by vLLM, `make vllm`) are asked for by name"),
        device_option,
        click.option("--max-memory", help="caps for the transformers runtime, e.g. cuda:0=20GiB,cpu=12GiB (layers over "
                     "every GPU, then the CPU, then disk; default: what the machine has)"),
        click.option("-o", "--output", "out", type=click.Path(path_type=Path), help="directory for results and plot"),
        click.option("--cache-dir", type=click.Path(path_type=Path),
                     help="results cache (default OUT/cache, or ~/.cache/ropeconv/eval without -o)"),
        click.option("--json", "as_json", is_flag=True, help="the results document on stdout"),
        click.option("-q", "--quiet", is_flag=True, help="no progress on stderr"),
    ]):
        f = decorator(f)
    return f


@click.group(name="eval")
def eval_group() -> None:
    """Evaluate a model in its target runtime: passkey retrieval, RULER and perplexity."""


def pick_device(device: str):
    from ropeconv.device import pick  # imports torch: only when a command runs, never for --help

    return pick.pick_device(device)


def prepare_out(out: Path | None, name: str, models: Sequence[Path], text: Path | None = None) -> None:
    """-o checked before any work: a folder (made when there is something to write), whose results may be placed,
    neither a model evaluated, nor inside one or inside the ropeconv output holding it (its manifest would no longer
    list every file, and `extend --force` would refuse to replace it), nor the --text."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: exists and is not a directory")
    from ropeconv.export.staging import overlap_refusal

    inputs = [("model", Path(m)) for m in models] + ([("--text", Path(text))] if text is not None else [])
    for m in models:  # OUT/x.gguf and OUT/onnx/model.onnx belong to the output folder OUT
        holder = next((p for p in list(Path(m).absolute().parents)[:2] if (p / "manifest.json").is_file()), None)
        if holder is not None:
            inputs.append(("ropeconv output", holder))
    reason = overlap_refusal(out, inputs)
    if reason:
        raise InputError(f"-o {reason}")
    from ropeconv.eval.publish import check

    check(out, name)


def cache_dir_for(out: Path | None, cache_dir: Path | None) -> Path:
    return cache_dir if cache_dir is not None else (out / "cache" if out is not None else cache_mod.default_dir())


def placement_for(max_memory: str | None, dev, out: Path | None):
    """--max-memory checked against the device before any work; disk offload beside -o when given (not in it:
    -o is made only when there is something to put in it)."""
    from ropeconv.device.placement import budget, parse_max_memory

    placement = parse_max_memory(max_memory)
    if out is not None:
        placement = placement.beside(out)
    budget(placement, dev)
    return placement


def publish_results(doc: dict, out, name: str, plot, table, as_json: bool) -> None:
    """OUT/<name>.json and OUT/<name>.png when -o is given (see ropeconv.eval.publish); the document or its table
    on stdout."""
    if out is None:
        if as_json:
            emit_json(doc)
        else:
            click.echo(table(doc))
        return
    from ropeconv.eval.publish import publish, results_paths

    publish(out, name, doc, plot)
    document, png = results_paths(out, name)
    if as_json:
        emit_json(doc, published=document)
        return
    echo_published(f"{table(doc)}\nwrote {document} and {png}", document)


@dataclass(frozen=True)
class EvalStart:
    """What a run has once every check passed, before any work."""

    refs: list[rt.ModelRef]  # the models, resolved in their runtime (in the order given)
    device: Any  # torch.device
    placement: Any  # device.placement's caps (--max-memory)
    progress: Progress


def start(name: str, models: Sequence[Path], runtime: str, out: Path | None, device: str, max_memory: str | None,
          quiet: bool, text: Path | None = None) -> EvalStart:
    """Every eval command's checks before any work, nothing written: each model resolved in the runtime, -o (see
    prepare_out), the plot library when there is a plot to write, the device, and --max-memory against it."""
    refs = [rt.resolve(m, runtime) for m in models]
    prepare_out(out, name, models, text)
    if out is not None:
        plots.require()
    dev = pick_device(device)
    return EvalStart(refs, dev, placement_for(max_memory, dev, out), Progress(enabled=not quiet))

