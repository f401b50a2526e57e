"""ropeconv recipe: run and check YAML recipes (a whole release, repeatable, for pipelines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ropeconv.cli.options import emit_json
from ropeconv.cli.report import echo_published
from ropeconv.errors import RopeconvError
from ropeconv.progress import Progress

EPILOG = """\b
Examples:
  ropeconv recipe check recipes/*.yaml
  ropeconv recipe run recipes/smollm2-135m-yarn-32k.yaml
  ropeconv recipe run recipes/smollm2-135m-yarn-32k.yaml --set method.factor=8 --set out=../work/smol-64k
  ropeconv recipe run recipes/gpt2-absolute-4k.yaml --json > result.json   # 0 ok · 1 parity · 2 bad input
\b
A recipe (YAML): base {path, original_ctx, rebase}, lora [{path, trained_with}], method {name, factor |
target_ctx, the method's options}, outputs [{format, outtype | dtype}], out, parity {verify, max_abs_logit,
tokens, device}, card {title, description, license, tags, base_model}, name. Relative paths are relative to the
recipe.
"""


@click.group(epilog=EPILOG)
def recipe() -> None:
    """Run or check YAML recipes (`ropeconv extend … --save-recipe FILE` writes one)."""


@recipe.command(epilog=EPILOG)
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a recipe value (repeatable)")
@click.option("--force", is_flag=True, help="run even when the output's manifest already matches; replace "
              "another ropeconv output (never files ropeconv did not write)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable result on stdout")
@click.option("-q", "--quiet", is_flag=True, help="no progress on stderr")
def run(file: Path, sets: tuple[str, ...], force: bool, as_json: bool, quiet: bool) -> int:
    """Run the recipe FILE: extend, export, prove, publish. Skipped when its output is already up to date."""
    from ropeconv.recipe.load import load_recipe
    from ropeconv.recipe.run import run_recipe

    if quiet:
        from ropeconv.hub.base import quiet_downloads

        quiet_downloads()  # a Hub base's download bars, and a push's upload bars
    loaded = load_recipe(file, sets)
    outcome = run_recipe(loaded, force=force, progress=Progress(enabled=not quiet))
    result = outcome.result
    pushed = getattr(result, "pushed", None)  # hub.push.Pushed: the recipe's `push` ran
    # published (or up to date): a stdout that cannot take the report is exit 74, not "bad input, nothing written"
    if as_json:
        emit_json({"recipe": str(file), "recipe_sha256": loaded.sha256, "out": str(outcome.out),
                   "skipped": outcome.skipped,
                   "pushed": pushed.to_json() if pushed else None,
                   "reports": [r.to_json() for r in result.reports] if result else []}, published=outcome.out)
    elif outcome.skipped:
        push = loaded.job.push
        echo_published(f"{outcome.out} is up to date with {file} (manifest matches; --force to rebuild)"
                       + (f"; not pushed (`ropeconv push {outcome.out} {push}` uploads it)" if push else ""),
                       outcome.out)
    else:
        assert result is not None  # not skipped: the pipeline ran
        p = result.plan
        echo_published(f"wrote {outcome.out}: {p.method} {p.original_ctx} → {p.target_ctx} tokens"
                       + (", parity passed" if result.parity else ", parity not checked (parity.verify false)")
                       + (f"; pushed to {pushed.repo}" if pushed else ""), outcome.out)
    return 0


@recipe.command(epilog=EPILOG)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a value in every recipe")
@click.option("--json", "as_json", is_flag=True, help="machine-readable result on stdout")
def check(files: tuple[Path, ...], sets: tuple[str, ...], as_json: bool) -> int:
    """Validate recipes without running them: every problem of every file, one line each with its YAML path.
    The base need not be on this machine (that is checked when the recipe runs)."""
    from ropeconv.recipe.load import problems_of

    results: dict[str, dict[str, Any]] = {}
    for file in files:
        loaded, problems = problems_of(file, sets)
        results[str(file)] = {"ok": not problems, "problems": problems,
                              "sha256": loaded.sha256 if loaded else None}
    if as_json:
        emit_json(results)
    else:
        for name, r in results.items():
            if r["ok"]:
                click.echo(f"ok   {name}")
            for line in r["problems"]:
                click.echo(f"ropeconv: error: {line}", err=True)
    bad = sum(not r["ok"] for r in results.values())
    if bad:
        raise _Reported(f"{bad} of {len(results)} recipe(s) have problems")
    return 0


class _Reported(RopeconvError):
    """Problems already printed line by line; the summary line is the error."""
