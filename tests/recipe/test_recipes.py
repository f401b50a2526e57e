"""Recipes and release behaviour: the shipped recipes validate, schema errors come all at once with their
YAML paths, runs are byte-identical and skipped when up to date, exit codes, --json everywhere, a real
signal mid-write, and the SmolLM2 recipe through make."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from ropeconv.recipe.load import problems_of
from tests.conftest import add_byte_level_tokenizer, make_tiny, read_json, run_cli

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return add_byte_level_tokenizer(make_tiny(tmp_path_factory.mktemp("recipe-base"), "llama"))


def write_recipe(folder: Path, base: Path, out: str = "out", **changes) -> Path:
    data = {"base": {"path": str(base)}, "method": {"name": "yarn", "factor": 4},
            "outputs": [{"format": "safetensors"}, {"format": "gguf", "outtype": "f32"}], "out": out,
            "parity": {"device": "cpu"}}
    data.update(changes)
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_json(capsys, *args) -> tuple[int, dict]:
    capsys.readouterr()
    rc = run_cli(*args, "--json")
    out = capsys.readouterr().out
    return rc, (json.loads(out) if out.strip() else {})


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ shipped recipes

def test_shipped_recipes_validate_and_are_named_for_what_they_do(capsys):
    names = {p.stem for p in RECIPES}
    assert {"smollm2-135m-yarn-32k", "llama-2-7b-linear-32k", "mistral-7b-yarn-128k", "phi-3-mini-longrope-128k",
            "bloom-560m-alibi-8k", "gpt2-absolute-4k"} <= names and any(n.startswith("llama-3.1-8b-llama3") for n in names)
    for path in RECIPES:
        loaded, problems = problems_of(path)
        assert problems == [], problems
        assert re.fullmatch(rf"[a-z0-9.\-]+-{loaded.recipe.method.name}-\d+k", path.stem), path.name
    rc, result = run_json(capsys, "recipe", "check", *RECIPES)
    assert rc == 0 and all(r["ok"] for r in result.values())


@pytest.mark.parametrize("path", [p for p in RECIPES if "smollm2" not in p.name], ids=lambda p: p.stem)
def test_recipe_without_its_base_fails_clearly(path, capsys, tmp_path):
    rc = run_cli("recipe", "run", path, "--set", f"out={tmp_path / 'out'}")
    err = capsys.readouterr().err
    assert rc == 2 and "base" in err and "not found" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------- schema errors

def test_every_schema_error_at_once_with_its_path(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "base": {"paht": "x"},
        "method": {"name": "yarn", "factor": 0.5, "bake_at": 3},
        "outputs": [{"format": "tflite"}, {"format": "onnx", "dtype": "int3"}],
        "parity": {"tokens": 1},
        "surprise": True,
    }))
    rc = run_cli("recipe", "check", bad)
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    expected = ["base.path", "base.paht", "method.factor", "method.bake_at", "outputs.0.format", "outputs.1.dtype",
                "parity.tokens", "surprise", ": out:"]
    for where in expected:
        assert any(where in line for line in lines), (where, lines)
    assert all(line.startswith(f"ropeconv: error: {bad}: ") for line in lines[:-1]), lines
    assert "1 of 1 recipe(s) have problems" in lines[-1]


@pytest.mark.parametrize("text,where", [
    ("base: [unclosed", "not valid YAML (line 1"),
    ("- a list", "(top): expected a mapping"),
    ("base: {path: x}\nmethod: {name: nope}\noutputs: [{format: gguf}]\nout: o\n", "method.name"),
    ("base: {path: x}\nmethod: {name: longrope, target_ctx: 99, factors: missing.json}\n"
     "outputs: [{format: gguf}]\nout: o\n", "method.factors: missing.json not found"),
    ("base: {path: x}\nmethod: {name: linear, factor: 2}\noutputs: [{format: gguf}, {format: gguf}]\nout: o\n",
     "outputs: a format is listed twice"),
])
def test_each_kind_of_problem(tmp_path, capsys, text, where):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert run_cli("recipe", "check", bad) == 2
    assert where in capsys.readouterr().err


def test_set_overrides_and_their_errors(tmp_path, base, capsys):
    recipe = write_recipe(tmp_path, base)
    rc, result = run_json(capsys, "recipe", "check", recipe, "--set", "method.factor=8", "--set",
                          "outputs.1.outtype=q8_0")
    assert rc == 0
    for bad, says in [("method.factor", "KEY=VALUE"), ("outputs.5.format=gguf", "no item 5"),
                      ("method.factor=0.5", "method.factor")]:
        assert run_cli("recipe", "check", recipe, "--set", bad) == 2
        assert says in capsys.readouterr().err


# ----------------------------------------------------------------------------------- release runs

def test_runs_are_byte_identical_manifest_complete_and_skipped_when_up_to_date(tmp_path, base, capsys):
    recipe = write_recipe(tmp_path, base, out="out", card={"title": "A tiny test", "license": "mit"})
    rc, first = run_json(capsys, "recipe", "run", recipe)
    assert rc == 0 and first["skipped"] is False
    assert [r["runtime"] for r in first["reports"]] == ["transformers", "llama.cpp"]
    out = tmp_path / "out"
    manifest = read_json(out / "manifest.json")
    # the manifest: every file's sha256 and size, versions, the recipe's hash, the parity result
    for rel, record in manifest["files"].items():
        data = (out / rel).read_bytes()
        assert record == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, rel
    assert set(manifest["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*")} - {"manifest.json"}
    assert manifest["recipe"] == {"file": str(recipe.resolve()), "sha256": first["recipe_sha256"]}
    assert manifest["ropeconv_version"] and {"torch", "transformers"} <= set(manifest["libraries"])
    assert all(p["passed"] for p in manifest["parity"].values())
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.license == "mit" and card.text.lstrip().startswith("# A tiny test")
    before = tree(out)
    mtime = (out / "model.safetensors").stat().st_mtime_ns

    # unchanged recipe and base: skipped, nothing touched
    rc, again = run_json(capsys, "recipe", "run", recipe)
    assert rc == 0 and again["skipped"] is True and again["reports"] == []
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime

    # --force rebuilds: byte-identical to the first run
    rc, forced = run_json(capsys, "recipe", "run", recipe, "--force")
    assert rc == 0 and forced["skipped"] is False
    assert tree(out) == before

    # a damaged output is not "up to date"
    (out / "config.json").write_text("{}")
    rc, repaired = run_json(capsys, "recipe", "run", recipe)
    assert rc == 0 and repaired["skipped"] is False and tree(out) == before

    # a changed recipe replaces its own previous output
    rc, changed = run_json(capsys, "recipe", "run", recipe, "--set", "method.factor=2")
    assert rc == 0 and changed["skipped"] is False and changed["recipe_sha256"] != first["recipe_sha256"]
    assert read_json(out / "manifest.json")["plan"]["factor"] == 2.0


def test_exit_codes_and_the_parity_gate(tmp_path, base, capsys):
    recipe = write_recipe(tmp_path, base, out="gated", parity={"device": "cpu", "max_abs_logit": 1e-12})
    assert run_cli("recipe", "run", recipe) == 1  # parity failed: nothing published
    assert not (tmp_path / "gated").exists()
    assert run_cli("recipe", "run", recipe, "--set", "parity.verify=false") == 0  # no gate asked for
    assert (tmp_path / "gated" / "manifest.json").is_file()
    assert run_cli("recipe", "run", tmp_path / "nope.yaml") == 2
    other = tmp_path / "not-a-recipe-output"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert run_cli("recipe", "run", recipe, "--set", f"out={other}") == 2  # not this recipe's: needs --force
    assert (other / "keep.txt").read_text() == "mine"


def test_save_recipe_round_trip(tmp_path, base, capsys):
    saved = tmp_path / "saved.yaml"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--beta-fast", "16", "--to",
                   "safetensors,onnx", "--device", "cpu", "-o", tmp_path / "direct", "-q",
                   "--save-recipe", saved) == 0
    data = yaml.safe_load(saved.read_text())
    assert data["method"] == {"name": "yarn", "factor": 4.0, "beta_fast": 16.0}
    assert [o["format"] for o in data["outputs"]] == ["safetensors", "onnx"]
    assert problems_of(saved)[1] == []
    assert run_cli("recipe", "run", saved, "--set", f"out={tmp_path / 'again'}", "-q") == 0
    direct, again = tree(tmp_path / "direct"), tree(tmp_path / "again")
    assert {k: v for k, v in direct.items() if k != "manifest.json"} == \
           {k: v for k, v in again.items() if k != "manifest.json"}


def test_json_on_every_command(tmp_path, base, capsys):
    out = tmp_path / "o"
    recipe = write_recipe(tmp_path, base, out=str(out))
    for args in (("methods",), ("inspect", base), ("recipe", "check", recipe), ("recipe", "run", recipe),
                 ("verify", out), ("inspect", out), ("extend", base, "--method", "linear", "--factor", "2",
                                                     "--dry-run", "-o", tmp_path / "dry")):
        rc, data = run_json(capsys, *args)
        assert rc == 0 and data, args


def test_sigterm_during_a_recipe_run_leaves_the_previous_output(tmp_path, capsys):
    from tests.test_interrupt import Run, assert_interrupted, digest, hidden_siblings

    slow = make_tiny(tmp_path, "llama", name="slow", num_hidden_layers=4, hidden_size=128, intermediate_size=256)
    recipe = write_recipe(tmp_path, slow, out="out", outputs=[{"format": "safetensors"}],
                          parity={"device": "cpu", "tokens": 1024})
    assert run_cli("recipe", "run", recipe, "--set", "parity.verify=false", "-q") == 0
    previous = digest(tmp_path / "out")
    run = Run(["recipe", "run", str(recipe), "--set", "method.factor=16"])
    try:
        run.wait_for_line("candidate:")
        run.proc.send_signal(signal.SIGTERM)
        rc = run.wait()
    finally:
        run.kill()
    assert_interrupted(run, rc)
    assert digest(tmp_path / "out") == previous
    assert hidden_siblings(tmp_path / "out") == []


@pytest.mark.slow
def test_smollm2_recipe_through_make(tmp_path):
    """`make smollm2-135m-yarn-32k` (materializes the base, then runs the recipe), probe shortened."""
    out = tmp_path / "smol"
    env = dict(os.environ, MAKEFLAGS="")
    args = f"--set out={out} --set parity.tokens=512 --json -q"
    proc = subprocess.run(["make", "-s", "smollm2-135m-yarn-32k", f"RECIPE_ARGS={args}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert [r["runtime"] for r in result["reports"]] == ["transformers", "llama.cpp", "onnxruntime"]
    assert all(r["passed"] for r in result["reports"])
    manifest = read_json(out / "manifest.json")
    assert manifest["recipe"]["sha256"] == result["recipe_sha256"]
    assert {"model.safetensors", "onnx/model.onnx"} <= set(manifest["files"])
