"""ropeconv's entry point: turns every user error into one line on stderr and an exit code.

0 ok · 1 parity failed · 2 bad input (no traceback) · 130 interrupted (nothing half-written).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Callable

import click

from ropeconv import __version__
from ropeconv.errors import RopeconvError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
      ropeconv recipe check recipes/*.yaml
      ropeconv eval passkey out/smollm2-135m-Q8_0.gguf --lengths 8k,12k --trials 3 -o eval/
      ropeconv eval ppl ./base out/ --text book.txt --lengths 2k,8k,16k --stride 512 -o eval/
      ropeconv search longrope ./base --target-ctx 16384 --text book.txt -o factors.json
    """


def _register() -> None:
    from ropeconv.cli import extend, finetune, inspect, methods_cmd, recipe, verify

    cli.add_command(extend.extend)
    cli.add_command(inspect.inspect)
    cli.add_command(verify.verify)
    cli.add_command(methods_cmd.methods)
    cli.add_command(finetune.finetune)
    cli.add_command(recipe.recipe)
    from ropeconv.cli import eval as eval_cmd  # "eval" is a builtin's name

    cli.add_command(eval_cmd.eval_group)
    from ropeconv.cli import search

    cli.add_command(search.search)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised as an exception so staged outputs are cleaned up on the way out."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Interrupted()


def main(argv: list[str] | None = None) -> int:
    _register()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    restore = _paths_printable(sys.stdout)
    try:
        return _run(argv)
    finally:
        restore()
        signal.signal(signal.SIGTERM, previous)


def _paths_printable(stream) -> "Callable[[], None]":
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
        return int(result or 0)
    except RopeconvError as exc:
        click.echo(f"ropeconv: error: {_one_line(str(exc))}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"ropeconv: error: {_one_line(exc.format_message())}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("ropeconv: interrupted; nothing was published", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("ropeconv: interrupted; nothing was published", err=True)
        return 130
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
