"""Start-up: the commands that touch no tensor import no runtime.

`--version`, `--help` (of every command and subcommand), `methods`, `inspect` on a HF folder, a GGUF and an
ONNX, `recipe check`, `extend --dry-run` and a byte-copy `extend --no-verify` run in one fresh interpreter
(this test process has torch loaded already); after each, the runtimes' modules must still be absent from
sys.modules. Importing torch alone costs ~1.5-2 s here, transformers more: a module-level import of either in
any command module shows up here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.conftest import add_byte_level_tokenizer, make_tiny, run_cli

HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "llama_cpp", "accelerate", "peft", "safetensors.torch")

# Runs each command line in-process, in order, and reports the heavy modules each one brought in.
PROBE = r"""
import contextlib, io, json, sys
from ropeconv.cli.main import COMMANDS, cli, main

heavy = json.loads(sys.argv[1])
report = []


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    loaded = [m for m in heavy if m in sys.modules]
    report.append({"argv": argv, "rc": rc, "loaded": loaded, "out": out.getvalue(), "err": err.getvalue()[-400:]})


if sys.argv[3:] != ["--no-help"]:
    run(["--version"])
    run(["--help"])
    for name in sorted(COMMANDS):
        run([name, "--help"])  # imports the command's module: its subcommands are known from here on
        for sub in sorted(getattr(cli.get_command(None, name), "commands", {})):
            run([name, sub, "--help"])
for argv in json.loads(sys.argv[2]):
    run(argv)
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("startup")
    base = add_byte_level_tokenizer(make_tiny(root, "llama"))
    out = root / "out"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "2", "--to", "safetensors,gguf,onnx",
                   "--no-verify", "-q", "-o", out) == 0
    recipe = root / "tiny.yaml"
    recipe.write_text(f"base:\n  path: {base}\nmethod:\n  name: yarn\n  factor: 2\noutputs:\n  - format: safetensors\n"
                      f"  - format: gguf\n    outtype: q8_0\nout: {root / 'recipe-out'}\n")
    gguf = next(out.glob("*.gguf"))
    return {"base": base, "out": out, "gguf": gguf, "onnx": out / "onnx" / "model.onnx", "recipe": recipe}


def probe(runs: list[list[str]], heavy: tuple[str, ...] = HEAVY, helps: bool = True) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(heavy), json.dumps(runs)] + ([] if helps else
                          ["--no-help"]), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_commands_that_touch_no_tensor_import_no_runtime(outputs):
    dry_out = outputs["out"].parent / "dry"
    copied_out = outputs["out"].parent / "copied"
    runs = [
        ["methods"],
        ["inspect", str(outputs["base"])],
        ["inspect", str(outputs["out"])],
        ["inspect", str(outputs["gguf"])],
        ["inspect", str(outputs["onnx"])],
        ["recipe", "check", str(outputs["recipe"])],
        ["extend", str(outputs["base"]), "--method", "yarn", "--factor", "4", "--to", "safetensors,gguf",
         "--dry-run", "-o", str(dry_out)],
        # a byte-copy extend touches no tensor either: every tensor is copied, the manifest hashes the bytes
        ["extend", str(outputs["base"]), "--method", "yarn", "--factor", "4", "--no-verify", "-q", "-o",
         str(copied_out)],
    ]
    # a GGUF conversion whose casts and row reorders are numpy's (F32 weights to F16): no torch either
    runs.append(["extend", str(outputs["base"]), "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype",
                 "f16", "--no-verify", "-q", "-o", str(outputs["out"].parent / "converted")])
    report = probe(runs)
    for row in report:
        assert row["rc"] == 0, row
        assert row["loaded"] == [], f"`ropeconv {' '.join(row['argv'])}` imported {row['loaded']}"
    by_argv = {tuple(r["argv"]): r for r in report}
    # the commands did their work (not refused early): what each prints names what it read
    assert "yarn" in by_argv[("inspect", str(outputs["onnx"]))]["out"]
    assert "yarn" in by_argv[("inspect", str(outputs["gguf"]))]["out"]
    assert "yarn" in by_argv[("methods",)]["out"]
    assert not dry_out.exists()
    assert (copied_out / "model.safetensors").is_file() and (copied_out / "manifest.json").is_file()
    helps = [r for r in report if r["argv"][-1] == "--help"]
    assert {("eval", "passkey", "--help"), ("extend", "--help"), ("recipe", "run", "--help")} <= \
        {tuple(r["argv"]) for r in helps}
    listing = by_argv[("--help",)]["out"]
    from ropeconv.cli.main import COMMANDS

    for name in COMMANDS:  # every command listed with its help, none imported
        assert f"  {name} " in listing, listing


def test_stacked_experts_take_the_numpy_path(tmp_path):
    """A mixture of experts converted F32 → F16: every expert slice of a stack is cast by numpy as a tensor of its
    own would be, so the conversion imports no torch either."""
    base = add_byte_level_tokenizer(make_tiny(tmp_path, "mixtral"))
    [row] = probe([["extend", str(base), "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype", "f16",
                    "--no-verify", "-q", "-o", str(tmp_path / "out")]], helps=False)
    assert row["rc"] == 0, row
    assert row["loaded"] == [], f"the stacked-expert conversion imported {row['loaded']}"


def test_reading_a_gguf_header_imports_neither_numpy_nor_gguf_py(outputs):
    """inspect of a GGUF and a retrofit's dry run read the KV header with the standard library alone (numpy and
    gguf-py are ~0.1-0.25 s of imports)."""
    runs = [["inspect", str(outputs["gguf"])],
            ["extend", str(outputs["gguf"]), "--method", "yarn", "--factor", "8", "--rebase", "--dry-run", "-o",
             str(outputs["out"].parent / "dry.gguf")]]
    report = probe(runs, HEAVY + ("numpy", "gguf"), helps=False)
    for row in report:
        assert row["rc"] == 0, row
        assert row["loaded"] == [], f"`ropeconv {' '.join(row['argv'])}` imported {row['loaded']}"
    assert "yarn" in report[-2]["out"] and "nothing written" in report[-1]["err"] + report[-1]["out"]


def test_gguf_types_are_gguf_pys():
    """The reader's stdlib copy of the type codes and block sizes against gguf-py's own."""
    import gguf

    from ropeconv.gguf_io import types

    for ours, theirs in ((types.GGUFValueType, gguf.GGUFValueType),
                         (types.GGMLQuantizationType, gguf.GGMLQuantizationType)):
        assert [(m.name, m.value) for m in ours] == [(m.name, m.value) for m in theirs]
    assert {int(k): v for k, v in types.GGML_QUANT_SIZES.items()} == \
        {int(k): v for k, v in gguf.GGML_QUANT_SIZES.items()}


def test_registry_help_lines_match_the_commands():
    """ropeconv --help shows the registry's lines without importing the commands: they must be what each
    command's own help says."""
    import importlib

    from ropeconv.cli.main import COMMANDS, cli

    for name, (module, attribute, line) in COMMANDS.items():
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):  # a builder (extend's: the registries as they stand)
            command = command()
        assert command.name == name
        for limit in (45, 80, 300):
            assert click.Command(name, help=line).get_short_help_str(limit) == command.get_short_help_str(limit), name
    assert sorted(cli.list_commands(None)) == sorted(COMMANDS)


def test_onnx_metadata_entries_decode_as_protobuf_does():
    """The ONNX metadata reader decodes StringStringEntryProto itself (no onnx import); onnx's own parser is
    the reference, on entries with non-ASCII text, a repeated field and an unknown field."""
    from onnx import StringStringEntryProto

    from ropeconv.onnx_export.metadata import _entry

    cases = [StringStringEntryProto(key="ropeconv.plan", value='{"method": "yarn"}').SerializeToString(),
             StringStringEntryProto(key="ключ", value="значение ✓" * 100).SerializeToString(),
             StringStringEntryProto(key="", value="").SerializeToString()]
    twice = cases[0] + StringStringEntryProto(value="second").SerializeToString()  # the last value wins
    unknown = cases[0] + bytes([3 << 3 | 0, 150, 1]) + bytes([4 << 3 | 2, 2]) + b"xy"  # fields 3 (varint), 4
    for raw in cases + [twice, unknown]:
        parsed = StringStringEntryProto.FromString(raw)
        assert _entry(raw) == (parsed.key, parsed.value)
    with pytest.raises(ValueError):
        _entry(bytes([1 << 3 | 2, 10]) + b"short")


def test_recipe_check_reads_no_checkpoint_code(outputs):
    """`recipe check` validates a recipe without its base: none of the checkpoint readers, tensor writers or numpy
    are imported (the safetensors writer alone pulled in the checkpoint package, ~30 ms of a 0.3 s budget)."""
    light = ("numpy", "gguf", "ropeconv.checkpoint", "ropeconv.export.safetensors_writer", "ropeconv.hashing")
    report = probe([["recipe", "check", str(outputs["recipe"])]], HEAVY + light, helps=False)
    assert report[0]["rc"] == 0, report[0]
    assert report[0]["loaded"] == [], f"`recipe check` imported {report[0]['loaded']}"


def test_planning_a_gguf_imports_neither_numpy_nor_gguf_py(outputs):
    """A dry run to GGUF plans every tensor name through gguf-py's own name map, loaded without gguf-py's package
    (its __init__ imports numpy and the writer) and without reading the vocabulary's arrays."""
    dry = outputs["out"].parent / "dry-gguf"
    [row] = probe([["extend", str(outputs["base"]), "--method", "yarn", "--factor", "4", "--to", "safetensors,gguf",
                    "--dry-run", "-o", str(dry)]], HEAVY + ("numpy", "gguf"), helps=False)
    assert row["rc"] == 0, row
    assert row["loaded"] == [], f"the GGUF dry run imported {row['loaded']}"
    assert "nothing written" in row["out"] and not dry.exists()


def test_planning_an_onnx_imports_neither_onnx_nor_transformers(outputs):
    """A dry run to ONNX reads config.json through the families' view of transformers' config classes
    (families/test_config_defaults proves the plans equal) and sizes every initializer from the headers: no onnx, numpy,
    transformers or torch (the last two were 1.6 s of each such dry run)."""
    dry = outputs["out"].parent / "dry-onnx"
    [row] = probe([["extend", str(outputs["base"]), "--method", "yarn", "--factor", "4", "--to", "onnx", "--dtype",
                    "int4", "--dry-run", "-o", str(dry)]], HEAVY + ("numpy",), helps=False)
    assert row["rc"] == 0, row
    assert row["loaded"] == [], f"the ONNX dry run imported {row['loaded']}"
    assert "nothing written" in row["out"] and not dry.exists()


TABLES = r"""
import json, sys
from ropeconv.gguf_io import tables
from ropeconv.families import GGUF_LAYOUTS

assert "gguf" not in sys.modules
mapping, constants = tables.tensor_mapping(), tables.constants()
assert "gguf" not in sys.modules and "numpy" not in sys.modules
ours = {}
for layout in GGUF_LAYOUTS.values():
    arch = next(a for a, name in constants.MODEL_ARCH_NAMES.items() if name == layout.arch)
    ours[layout.arch] = {k: [int(t), n] for k, (t, n) in mapping.get_tensor_name_map(arch, 3).mapping.items()}
import gguf
theirs = {}
for layout in GGUF_LAYOUTS.values():
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == layout.arch)
    theirs[layout.arch] = {k: [int(t), n] for k, (t, n) in gguf.get_tensor_name_map(arch, 3).mapping.items()}
print(json.dumps({"equal": ours == theirs, "archs": len(ours), "names": sum(map(len, ours.values())),
                  "private": mapping.__name__, "after": tables.tensor_mapping().__name__}))
"""


def test_the_private_tables_are_gguf_pys_own():
    """gguf_io.tables loads gguf-py's constants and tensor_mapping without its package: the same name map for
    every GGUF architecture a family writes, and gguf's own modules once gguf is imported."""
    done = subprocess.run([sys.executable, "-c", TABLES], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["equal"] and report["archs"] >= 10 and report["names"] > 1000, report
    assert report["private"].startswith("ropeconv._gguf_tables") and report["after"] == "gguf.tensor_mapping"
