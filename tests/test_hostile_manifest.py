"""Hostile manifests, recipes and CLI values (issue 26): `verify` checks every file its manifest lists (size and
sha256) and says which differs; every path the manifest names for the output stays inside it; a damaged
manifest is one line, never a traceback; manifests and recipes are bounded before they are read; sizes,
lengths and paths given on the command line or in a recipe are refused in one line when no run could take them.

The contract for a refusal is the hostile-input one: exit 2, exactly one `ropeconv: error:` line, no traceback,
nothing written beside the target and every file of the output byte-identical. A changed output is a failed
verification: exit 1, one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import add_byte_level_tokenizer, assert_refused, listing, read_json, run_cli

from ropeconv.errors import InputError
from ropeconv.manifest import MAX_MANIFEST_BYTES
from ropeconv.recipe.load import MAX_RECIPE_BYTES
from ropeconv.sizes import MAX_BYTES, parse_bytes

# ----------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def made(tiny_llama, tmp_path_factory) -> Path:
    """A safetensors output of the session's tiny llama with a byte-level tokenizer, made once: read only."""
    root = tmp_path_factory.mktemp("hostile-manifest")
    base = add_byte_level_tokenizer(Path(shutil.copytree(tiny_llama, root / "base")))
    assert run_cli("extend", base, "--method", "yarn", "--factor", "2", "--no-verify", "-q", "-o", root / "out") == 0
    return root / "out"


@pytest.fixture
def out(made, tmp_path) -> Path:
    """A private copy of the output, alone in its folder (so "nothing beside it" is checkable)."""
    return Path(shutil.copytree(made, tmp_path / "outputs" / "extended"))


def tree(root: Path) -> dict[str, str]:
    """Every entry under root: its sha256, or what it is."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        found[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() \
            else ("link" if path.is_symlink() else "dir")
    return found


def edit_manifest(out: Path, edit) -> None:
    manifest = read_json(out / "manifest.json")
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))


def verify(out: Path, *args: str) -> int:
    return run_cli("verify", out, "-q", "--device", "cpu", *args)


def refused_verify(capsys, out: Path, *mentions: str) -> str:
    """verify refused in one line, writing nothing and changing no file of the output."""
    before, beside = tree(out), listing(out.parent)
    capsys.readouterr()
    line = assert_refused(capsys, verify(out), out, beside, mentions=mentions)
    assert tree(out) == before
    return line


def failed_verify(capsys, out: Path, *mentions: str) -> str:
    """A failed verification: exit 1, one line, no traceback."""
    capsys.readouterr()
    rc = verify(out)
    err = capsys.readouterr().err
    one_line = err.count("\n") == 1 and err.startswith("ropeconv: error: ") and "Traceback" not in err
    assert rc == 1 and one_line and all(word in err for word in mentions), f"exit {rc}; stderr:\n{err}"
    return err.strip()


def swap_two_ids(tokenizer: Path) -> None:
    """Swap the ids of the vocabulary's "a" and "b" in place, keeping the file's size: only its sha256 tells."""
    raw = tokenizer.read_bytes()
    (a,), (b,) = re.findall(rb'"a": (\d+)', raw), re.findall(rb'"b": (\d+)', raw)
    assert len(a) == len(b) and a != b
    swapped = raw.replace(b'"a": ' + a, b'"a": ' + b).replace(b'"b": ' + b, b'"b": ' + a, 1)
    assert len(swapped) == len(raw) and swapped != raw
    tokenizer.write_bytes(swapped)


# ----------------------------------------------------------------------------- every file's sha256 and size


def test_a_tokenizer_with_two_ids_swapped_fails_verification(capsys, out):
    assert verify(out) == 0  # sensitivity: the untouched copy passes
    swap_two_ids(out / "tokenizer.json")
    line = failed_verify(capsys, out, "tokenizer.json", "sha256")
    assert "1 file" in line, line


@pytest.mark.parametrize("damage", ["missing", "resized", "fifo"])
def test_a_listed_file_missing_resized_or_special_fails_verification(capsys, out, damage):
    target = out / "generation_config.json"
    if damage == "missing":
        target.unlink()
    elif damage == "resized":
        target.write_bytes(target.read_bytes() + b"\n")
    else:  # opened, it would block the hash forever: told from its stat alone
        target.unlink()
        os.mkfifo(target)
    failed_verify(capsys, out, "generation_config.json", {"missing": "missing", "resized": "bytes",
                                                           "fifo": "not a regular file"}[damage])


# ----------------------------------------------------------------------------- paths confined to the output


@pytest.mark.parametrize("form", ["dotdot", "absolute", "symlink", "dot-slash"])
def test_a_manifest_naming_a_file_outside_the_output_is_refused(capsys, out, tiny_yarn_gguf, form):
    """The manifest of B names A's GGUF (which passes its own verification): verify B must not check A's file."""
    name = {"dotdot": os.path.relpath(tiny_yarn_gguf, out), "absolute": str(tiny_yarn_gguf),
            "symlink": "model.gguf", "dot-slash": f"./{tiny_yarn_gguf.name}"}[form]
    if form == "symlink":
        (out / "model.gguf").symlink_to(tiny_yarn_gguf)
    elif form == "dot-slash":
        (out / tiny_yarn_gguf.name).symlink_to(tiny_yarn_gguf)
    record = read_json(tiny_yarn_gguf.parent / "manifest.json")["formats"]["gguf"]
    edit_manifest(out, _set("formats", "gguf", record | {"file": name}))
    refused_verify(capsys, out, "formats.gguf.file", "the output")


# ----------------------------------------------------------------------------- damaged manifests: one line each


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(manifest):
        node = manifest
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return edit


def _short_divisors(manifest):
    manifest["plan"]["divisors"] = manifest["plan"]["divisors"][:3]


def _fewer_rotated_channels(manifest):  # a consistent plan, for a model with half the rotated channels
    n = manifest["plan"]["rotary_dim"] // 2
    manifest["plan"]["rotary_dim"] = n
    manifest["plan"]["divisors"] = manifest["plan"]["divisors"][: n // 2]


DAMAGED = {
    "divisors-wrong-length": (_short_divisors, "divisors"),
    "rotary_dim-1e9": (_set("plan", "rotary_dim", 1e9), "rotary_dim"),
    "rotary_dim-not-the-base's": (_fewer_rotated_channels, "rotary_dim"),
    "original_ctx-1e30": (_set("plan", "original_ctx", 10**30), "plan"),
    "vocab_size-above-the-base's": (_set("vocab_size", 10**9), "vocab_size"),
    "vocab_size-negative": (_set("vocab_size", -5), "vocab_size"),
    "lora-entry-a-string": (_set("lora", ["adapter"]), "lora[0]"),
    "lora-an-object": (_set("lora", {"path": "x"}), "lora"),
    "files-a-list": (_set("files", ["config.json"]), "files"),
    "sha256-not-hex": (_set("files", "config.json", "sha256", "z" * 64), "sha256"),
    "base.path-NUL": (_set("base", "path", "/tmp/\0base"), "base.path"),
}


@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_damaged_manifest_is_one_line(capsys, out, damage):
    edit, mention = DAMAGED[damage]
    edit_manifest(out, edit)
    refused_verify(capsys, out, "manifest.json", mention)


def test_a_recorded_base_that_is_no_model_is_not_loaded(capsys, out):
    """base.path /etc: not a model folder, so the output's own weights stand in (as for a base that moved)."""
    edit_manifest(out, _set("base", "path", "/etc"))
    capsys.readouterr()
    assert verify(out, "--json") == 0, capsys.readouterr().err
    assert "base not found" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bounded before read


def test_a_huge_manifest_is_refused_before_it_is_read(capsys, out):
    with open(out / "manifest.json", "r+b") as fh:  # sparse: no disk, and reading it would hold it all
        fh.truncate(MAX_MANIFEST_BYTES + 1)
    refused_verify(capsys, out, "manifest.json", f"at most {MAX_MANIFEST_BYTES}")


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


# ----------------------------------------------------------------------------- command-line values


def test_sizes_are_bounded_at_one_exbibyte():
    assert parse_bytes("--max-shard-size", "1048576TiB") == MAX_BYTES == 2**60
    for text in ("1048577TiB", "9" * 400 + "GiB", "9" * 400 + "." + "9" * 400 + "GB"):
        with pytest.raises(InputError, match="1 EiB"):
            parse_bytes("--max-shard-size", text)


def test_max_memory_of_400_nines_is_one_line(capsys, out):
    before = tree(out)
    capsys.readouterr()
    rc = run_cli("verify", out, "-q", "--max-memory", "cpu=" + "9" * 400 + "GiB")
    assert_refused(capsys, rc, out, listing(out.parent), mentions=("--max-memory", "1 EiB"))
    assert tree(out) == before


@pytest.mark.parametrize("case", ["-o-NUL", "base-NUL", "base-a-link-loop", "max-shard-size-400-nines"])
def test_extend_values_no_run_could_take_are_one_line(capsys, tiny_llama, tmp_path, case):
    target = tmp_path / "out"
    base, extra, mention = tiny_llama, [], case.split("-")[0]
    if case == "-o-NUL":
        target, mention = tmp_path / "o\0ut", "-o"
    elif case == "base-NUL":
        base = Path(f"{tiny_llama}\0x")
    elif case == "base-a-link-loop":
        base = tmp_path / "loop"
        base.symlink_to(base)
    else:
        extra, mention = ["--max-shard-size", "9" * 400 + "GiB"], "--max-shard-size"
    before = tree(tiny_llama)
    capsys.readouterr()
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "2", "--no-verify", "-q", *extra, "-o", target)
    assert_refused(capsys, rc, tmp_path / "out", listing(tmp_path), mentions=(mention,))
    assert tree(tiny_llama) == before
