"""Hostile recipes: a recipe replaces only its own output and never a user's file, recipes are bounded before they
are read, values no run could take are one line, bad --set YAML is refused, --save-recipe writes nothing when
the run is refused, and `recipe check` refuses exactly what `recipe run` refuses.

The contract for every refusal: exit 2, exactly one `ropeconv: error:` line, no traceback, nothing written beside
the target.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ropeconv.recipe.load import MAX_RECIPE_BYTES
from tests.conftest import assert_refused, listing, read_json, run_cli
from tests.hostile.conftest import cli, extend_args, one_line, tree, write_recipe
from tests.test_interrupt import digest


def _recipe(folder: Path, model: Path, **sections) -> Path:
    """A recipe of the tiny model that publishes without a proof, its sections replaced by `sections`."""
    doc = {"base": {"path": str(model)}, "method": {"name": "yarn", "factor": 2},
           "outputs": [{"format": "safetensors"}], "out": "out", "parity": {"verify": False}} | sections
    path = folder / "r.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def _recipe_refused(capsys, recipe: Path, *mentions: str) -> None:
    folder = recipe.parent
    before = tree(folder)
    capsys.readouterr()
    assert_refused(capsys, run_cli("recipe", "run", recipe), folder / "out", listing(folder), mentions=mentions)
    assert tree(folder) == before


def test_a_huge_recipe_is_refused_before_it_is_read(capsys, tiny_llama, tmp_path):
    recipe = _recipe(tmp_path, tiny_llama)
    with open(recipe, "r+b") as fh:
        fh.truncate(MAX_RECIPE_BYTES + 1)
    _recipe_refused(capsys, recipe, f"at most {MAX_RECIPE_BYTES}")


@pytest.mark.parametrize("case", ["recipe-a-folder", "factors-a-folder", "tokens-2^31", "original_ctx-true",
                                  "out-NUL", "base.path-NUL", "max_shard_size-400-nines"])
def test_recipe_values_no_run_could_take_are_one_line(capsys, tiny_llama, tmp_path, case):
    (tmp_path / "folder").mkdir()
    if case == "recipe-a-folder":
        _recipe_refused(capsys, tmp_path / "folder", "directory")
        return
    extra, mention = {
        "factors-a-folder": ({"method": {"name": "freqs", "factors": "folder", "target_ctx": 128}},
                             "method.factors"),
        "tokens-2^31": ({"parity": {"verify": False, "tokens": 2**31}}, "parity.tokens"),
        "original_ctx-true": ({"base": {"path": str(tiny_llama), "original_ctx": True}}, "base.original_ctx"),
        "out-NUL": ({"out": "o\0ut"}, "NUL"),
        "base.path-NUL": ({"base": {"path": "/tmp/\0base"}}, "NUL"),
        "max_shard_size-400-nines": ({"max_shard_size": "9" * 400 + "GiB"}, "1 EiB"),
    }[case]
    _recipe_refused(capsys, _recipe(tmp_path, tiny_llama, **extra), mention)


# ----------------------------------------------------------------------------- 1. a recipe's own output


def test_recipe_replaces_only_its_own_output_and_never_a_users_file(tmp_path, base, capsys):
    a = write_recipe(tmp_path / "a" / "r.yaml", base, out=str(tmp_path / "out"))
    b = write_recipe(tmp_path / "b" / "r.yaml", base, out=str(tmp_path / "out"), method={"name": "linear",
                                                                                         "factor": 3})
    out = tmp_path / "out"
    assert cli(capsys, "recipe", "run", a, "-q")[0] == 0
    made = digest(out)
    # its own output (same recipe file), changed recipe: replaced without --force
    assert cli(capsys, "recipe", "run", a, "-q", "--set", "method.factor=4")[0] == 0
    assert read_json(out / "manifest.json")["plan"]["factor"] == 4.0
    made = digest(out)
    # another recipe's output: needs --force
    one_line(*cli(capsys, "recipe", "run", b, "-q"), "already exists", str(a.resolve()), "--force")
    assert digest(out) == made
    # a file of the user's in it: refused for its own recipe, for another, with --force too, naming the file
    (out / "mine.txt").write_text("mine\n")
    mine = digest(out)
    for args in ((a, "--set", "method.factor=8"), (b,), (b, "--force"), (a, "--force")):
        one_line(*cli(capsys, "recipe", "run", *args, "-q"), "mine.txt", "does not list")
        assert digest(out) == mine
    assert sorted(listing(tmp_path)) == ["a", "b", "base", "out"]


# ----------------------------------------------------------------------------- 10. --set and --save-recipe


@pytest.mark.parametrize("assignment", ["method.factor=[1,", "method.factor={a: 1", "card.title='x",
                                        "method.factor=*x"])
def test_set_with_bad_yaml(tmp_path, base, capsys, assignment):
    recipe = write_recipe(tmp_path / "r.yaml", base, out="out")
    one_line(*cli(capsys, "recipe", "run", recipe, "--set", assignment), "--set", "not valid YAML")
    rc, err = cli(capsys, "recipe", "check", recipe, "--set", assignment)
    assert rc == 2 and "not valid YAML" in err.splitlines()[0] and "Traceback" not in err
    assert sorted(listing(tmp_path)) == ["base", "r.yaml"]


# the command line and recipes make their job through one function (extend.options.build_job), which checks the
# request before the recipe is saved: the refusal names what the user typed
@pytest.mark.parametrize("args, words", [
    (("--factor", "1"), ("--factor must be > 1",)),
    (("--factor", "2", "--original-ctx", "0"), ("original context must be a positive integer, got 0",)),
    (("--factor", "2", "--beta-fast", "0.5"), ("--beta-fast",)),  # refused by the run, not the schema
], ids=["factor-1", "original-ctx-0", "refused-run"])
def test_save_recipe_writes_nothing_when_refused(base, place, capsys, args, words):
    saved = place / "saved.yaml"
    one_line(*cli(capsys, "extend", base, "--method", "yarn", *args, "--no-verify", "-o", place / "out",
                  "--save-recipe", saved), *words)
    assert listing(place) == []


def test_save_recipe_writes_nothing_when_the_output_is_refused(base, place, capsys):
    out = place / "out"
    assert cli(capsys, *extend_args(base, out))[0] == 0
    one_line(*cli(capsys, *extend_args(base, out, "--save-recipe", place / "saved.yaml")), "already exists")
    assert listing(place) == ["out"]
    assert cli(capsys, *extend_args(base, out, "--force", "--save-recipe", place / "saved.yaml"))[0] == 0
    assert listing(place) == ["out", "saved.yaml"]  # written once the run succeeded


# ----------------------------------------------------------------------------- 16. check refuses what run refuses


@pytest.mark.parametrize("sets", [["method.factor=1e400"], ["method.factor=.inf"], ["method.factor=-.inf"],
                                  ["method.factor=.nan"], ["method.factor=1e300"], ["method.beta_fast=0.5"],
                                  ["method.factor=null", "method.target_ctx=4000000000"],
                                  ["method.factor=null"], ["parity.max_abs_logit=.inf"]],
                         ids=lambda sets: ",".join(sets))
def test_recipe_check_refuses_what_run_refuses(tmp_path, base, capsys, sets):
    recipe = write_recipe(tmp_path / "r.yaml", base, out="out")
    overrides = [arg for s in sets for arg in ("--set", s)]
    run_line = one_line(*cli(capsys, "recipe", "run", recipe, *overrides, "-q"))
    rc, err = cli(capsys, "recipe", "check", recipe, *overrides)
    assert rc == 2 and err.splitlines()[0] == run_line, (err, run_line)
    assert sorted(listing(tmp_path)) == ["base", "r.yaml"]
