"""ropeconv's entry point: turns every user error into one line on stderr and an exit code.

0 ok · 1 parity failed · 2 bad input (no traceback) · 128 + the signal's number when a signal interrupted the run
(130 SIGINT, 143 SIGTERM; SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 likewise): nothing half-written, nothing published.
74: published, its report lost (cli.report) · 75: the upload to the Hub failed (hub.push; the output stands).
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from collections.abc import Callable

import click

from ropeconv import __version__
from ropeconv.errors import RopeconvError
from ropeconv.interrupts import exit_code, handled, raise_if_interrupted

# name → (module, attribute, the command's one-line help). A command's module is imported only when that command
# runs or shows its help: importing them all pulled torch in (via eval) and cost every command 2-4 s. The help lines
# are the docstrings' first sentences, repeated here so `ropeconv --help` lists every command without importing any
# (tests/cli/test_startup.py checks they still match).
COMMANDS: dict[str, tuple[str, str, str]] = {
    # cli.eval loads cli.eval_ruler, which adds `eval ruler` to the group (cli.eval_common)
    "eval": ("ropeconv.cli.eval", "eval_group",
             "Evaluate a model in its target runtime: passkey retrieval, RULER and perplexity."),
    "extend": ("ropeconv.cli.extend", "command",
               "Extend BASE (a HuggingFace model directory, a GGUF file, or a Hub id ORG/NAME[@REVISION][:FILE.gguf]) "
               "with --method and write it to --out."),
    "finetune": ("ropeconv.cli.finetune", "finetune",
                 "Fine-tune a base for an extended context; writes a PEFT LoRA adapter (needs ropeconv[finetune])."),
    "inspect": ("ropeconv.cli.inspect", "inspect",
                "Architecture, position scheme, contexts, scaling, tensor count and bytes of PATH (a HF dir, a GGUF "
                "or a ropeconv ONNX model)."),
    "methods": ("ropeconv.cli.methods_cmd", "methods",
                "Every method × output format: exact, exact via carrier, or refused (and why)."),
    "push": ("ropeconv.cli.push", "push",
             "Upload OUT (a ropeconv output folder, or a GGUF base's .gguf output) to the Hub repo REPO in one "
             "commit."),
    "recipe": ("ropeconv.cli.recipe", "recipe",
               "Run or check YAML recipes (`ropeconv extend … --save-recipe FILE` writes one)."),
    "search": ("ropeconv.cli.search", "search",
               "Search a method's parameters on a base model and a calibration text."),
    "verify": ("ropeconv.cli.verify", "verify",
               "Compare OUT (an output directory, a .gguf or a model.onnx) in its runtime with the base weights under "
               "the intended rope parameters."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use; commands added with add_command() still work."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute, _ = COMMANDS[cmd_name]
            found = getattr(importlib.import_module(module), attribute)
            if not isinstance(found, click.Command):  # a builder: the command as the registries stand now
                return found()
            self.add_command(found, cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            loaded = self.commands.get(name)
            rows.append((name, loaded.get_short_help_str(limit) if loaded is not None
                         else click.Command(name, help=COMMANDS[name][2]).get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ropeconv")
def cli() -> None:
    """Extend the context window of a pretrained model and export it with exact position metadata.

    \b
    Examples:
      ropeconv extend ./SmolLM2-135M --method yarn --factor 4 -o out/
      ropeconv extend ./SmolLM2-135M --method yarn --factor 4 --to safetensors,gguf,onnx -o out/
      ropeconv verify out/
      ropeconv inspect out/ --json
      ropeconv methods
      ropeconv extend ./base --lora ./adapter --method yarn --factor 16 -o out/
      ropeconv finetune pose ./base --train-ctx 2048 --target-ctx 16384 --method yarn --text book.txt -o adapter/
      ropeconv recipe run recipes/smollm2-135m-yarn-32k.yaml
      ropeconv push out/ me/SmolLM2-135M-YaRN-32k
      ropeconv recipe check recipes/*.yaml
      ropeconv eval passkey out/smollm2-135m-Q8_0.gguf --lengths 8k,12k --trials 3 -o eval/
      ropeconv eval ppl ./base out/ --text book.txt --lengths 2k,8k,16k --stride 512 -o eval/
      ropeconv search longrope ./base --target-ctx 16384 --text book.txt -o factors.json
    """


def main(argv: list[str] | None = None) -> int:
    restore = _paths_printable(sys.stdout)
    try:
        with handled():  # every catchable signal raises an Interrupted, so staged outputs are removed on the way out
            return _run(argv)
    finally:
        restore()


def _paths_printable(stream) -> Callable[[], None]:
    """A path whose bytes are not UTF-8 (os.fsdecode's surrogate escapes) prints as \\xNN instead of raising
    UnicodeEncodeError on a strict stdout (stderr already does this by default)."""
    errors = getattr(stream, "errors", None)
    if errors != "strict" or not hasattr(stream, "reconfigure"):
        return lambda: None
    try:
        stream.reconfigure(errors="backslashreplace")
    except (ValueError, OSError):
        return lambda: None
    return lambda: stream.reconfigure(errors=errors)


def _run(argv: list[str] | None) -> int:
    try:
        result = cli.main(args=argv, prog_name="ropeconv", standalone_mode=False)
        raise_if_interrupted()  # a signal whose raise was swallowed where it landed (a ctypes callback, a __del__)
        return int(result or 0)
    except RopeconvError as exc:
        click.echo(f"ropeconv: error: {_one_line(str(exc))}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"ropeconv: error: {_one_line(exc.format_message())}", err=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:  # click turns a KeyboardInterrupt into an Abort
        click.echo("ropeconv: interrupted; nothing was published", err=True)
        return exit_code(exc)
    except BrokenPipeError:
        raise
    except OSError as exc:  # the last net: disk, permissions, a vanished file — one line, never a traceback
        code = errno.errorcode.get(exc.errno or 0)
        where = f"{os.fsdecode(exc.filename)}: " if exc.filename is not None else ""
        click.echo(f"ropeconv: error: {_one_line(where + (exc.strerror or str(exc)))}"
                   + (f" ({code})" if code else ""), err=True)
        return 2


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
