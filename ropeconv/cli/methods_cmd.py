"""ropeconv methods: the capability matrix, produced from the method modules themselves."""

from __future__ import annotations

import click

from ropeconv.capabilities import arch_notes, format_markdown, matrix
from ropeconv.cli.options import emit_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable matrix")
@click.option("--markdown", is_flag=True, help="the table as it appears in the README")
def methods(as_json: bool, markdown: bool) -> int:
    """Every method × output format: exact, exact via carrier, or refused (and why)."""
    if as_json:
        emit_json({"methods": matrix(), "architecture_notes": arch_notes()})
    elif markdown:
        click.echo(format_markdown())
    else:
        for row in matrix():
            click.echo(f"{row['method']:<9} {row['summary']}")
            click.echo(f"  {'acts on':<12} {'/'.join(row['positions'])} positions: {', '.join(row['architectures'])}")
            for fmt, cell in row["cells"].items():
                click.echo(f"  {fmt:<12} {cell['support']:<18} {cell['how']}")
        for note in arch_notes():
            click.echo(f"note: {note}")
    return 0
