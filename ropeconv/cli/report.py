"""What a command prints after its output is published (the --json document or the summary).

Exit 2 means "bad input, nothing written"; once the output is in place that is no longer true, so a stdout that
cannot take the report (`--json > /dev/full`, a full disk) is one line saying the output WAS published and the
report was lost, with its own exit code: a pipeline reading the JSON still sees a failure, and nobody is told
the output failed when it did not.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from ropeconv.errors import RopeconvError

REPORT_LOST = 74  # EX_IOERR (sysexits.h): the work is done and published, writing its report to stdout failed


class ReportLost(RopeconvError):
    exit_code = REPORT_LOST


def echo_published(text: str, published: object) -> None:
    """click.echo(text) on stdout; an OS error there is ReportLost naming what was published."""
    try:
        click.echo(text)
    except BrokenPipeError:
        raise  # the reader went away: the usual quiet end of a pipeline
    except OSError as exc:
        _drop_stdout()
        code = errno.errorcode.get(exc.errno or 0, "")
        reason = (exc.strerror or str(exc)) + (f", {code}" if code else "")
        raise ReportLost(f"{published} was published, but its report could not be written to stdout ({reason})") \
            from None


def _drop_stdout() -> None:
    """Point stdout's descriptor at /dev/null: what is still buffered for it is dropped on the next flush (at
    exit) instead of failing again and turning the one line into a traceback or exit 120."""
    try:
        fd = sys.stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):  # no descriptor behind stdout (a test's capture): nothing to drop
        return
    os.dup2(null, fd)
    os.close(null)
