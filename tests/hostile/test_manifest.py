"""Hostile manifests: `verify` checks every file its manifest lists (size and sha256) and says which differs; every
path the manifest names for the output stays inside it; a damaged or missing manifest is one line, never a
traceback (verify and inspect); manifests are bounded before they are read.

The contract for a refusal: exit 2, exactly one `ropeconv: error:` line, no traceback, nothing written beside the
target and every file of the output byte-identical. A changed output is a failed verification: exit 1, one line
naming the file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from ropeconv.manifest import MAX_MANIFEST_BYTES
from tests.conftest import (
    assert_refused,
    listing,
    read_json,
    run_cli,
)
from tests.hostile.conftest import extend, refused_in_place, tree


def edit_manifest(output: Path, edit) -> None:
    manifest = read_json(output / "manifest.json")
    edit(manifest)
    (output / "manifest.json").write_text(json.dumps(manifest))


def verify(output: Path, *args: str) -> int:
    return run_cli("verify", output, "-q", "--device", "cpu", *args)


def refused_verify(capsys, output: Path, *mentions: str) -> str:
    """verify refused in one line, writing nothing and changing no file of the output."""
    before, beside = tree(output), listing(output.parent)
    capsys.readouterr()
    line = assert_refused(capsys, verify(output), output, beside, mentions=mentions)
    assert tree(output) == before
    return line


def failed_verify(capsys, output: Path, *mentions: str) -> str:
    """A failed verification: exit 1, one line, no traceback."""
    capsys.readouterr()
    rc = verify(output)
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


def test_a_tokenizer_with_two_ids_swapped_fails_verification(capsys, output):
    assert verify(output) == 0  # sensitivity: the untouched copy passes
    swap_two_ids(output / "tokenizer.json")
    line = failed_verify(capsys, output, "tokenizer.json", "sha256")
    assert "1 file" in line, line


@pytest.mark.parametrize("damage", ["missing", "resized", "fifo"])
def test_a_listed_file_missing_resized_or_special_fails_verification(capsys, output, damage):
    target = output / "generation_config.json"
    if damage == "missing":
        target.unlink()
    elif damage == "resized":
        target.write_bytes(target.read_bytes() + b"\n")
    else:  # opened, it would block the hash forever: told from its stat alone
        target.unlink()
        os.mkfifo(target)
    failed_verify(capsys, output, "generation_config.json", {"missing": "missing", "resized": "bytes",
                                                           "fifo": "not a regular file"}[damage])


# ----------------------------------------------------------------------------- paths confined to the output


@pytest.mark.parametrize("form", ["dotdot", "absolute", "symlink", "dot-slash"])
def test_a_manifest_naming_a_file_outside_the_output_is_refused(capsys, output, tiny_yarn_gguf, form):
    """The manifest of B names A's GGUF (which passes its own verification): verify B must not check A's file."""
    name = {"dotdot": os.path.relpath(tiny_yarn_gguf, output), "absolute": str(tiny_yarn_gguf),
            "symlink": "model.gguf", "dot-slash": f"./{tiny_yarn_gguf.name}"}[form]
    if form == "symlink":
        (output / "model.gguf").symlink_to(tiny_yarn_gguf)
    elif form == "dot-slash":
        (output / tiny_yarn_gguf.name).symlink_to(tiny_yarn_gguf)
    record = read_json(tiny_yarn_gguf.parent / "manifest.json")["formats"]["gguf"]
    edit_manifest(output, _set("formats", "gguf", record | {"file": name}))
    refused_verify(capsys, output, "formats.gguf.file", "the output")


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
def test_a_damaged_manifest_is_one_line(capsys, output, damage):
    edit, mention = DAMAGED[damage]
    edit_manifest(output, edit)
    refused_verify(capsys, output, "manifest.json", mention)


def test_a_recorded_base_that_is_no_model_is_not_loaded(capsys, output):
    """base.path /etc: not a model folder, so the output's own weights stand in (as for a base that moved)."""
    edit_manifest(output, _set("base", "path", "/etc"))
    capsys.readouterr()
    assert verify(output, "--json") == 0, capsys.readouterr().err
    assert "base not found" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bounded before read


def test_a_huge_manifest_is_refused_before_it_is_read(capsys, output):
    with open(output / "manifest.json", "r+b") as fh:  # sparse: no disk, and reading it would hold it all
        fh.truncate(MAX_MANIFEST_BYTES + 1)
    refused_verify(capsys, output, "manifest.json", f"at most {MAX_MANIFEST_BYTES}")


def test_verify_dir_without_manifest(capsys, base):
    before = tree(base)
    refused_in_place(capsys, run_cli("verify", base, "-q"), "manifest")
    assert tree(base) == before


def test_verify_unreadable_manifest(capsys, base):
    (base / "manifest.json").write_text("{not json")
    refused_in_place(capsys, run_cli("verify", base, "-q"), "manifest")


@pytest.mark.parametrize("damage", ["plan-empty", "plan-not-object", "no-vocab_size", "no-base", "manifest-a-list"])
@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_damaged_manifest(capsys, base, out, damage, command):
    assert extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify", "-q") == 0
    capsys.readouterr()
    manifest = read_json(out / "manifest.json")
    if damage == "plan-empty":
        manifest["plan"] = {}
    elif damage == "plan-not-object":
        manifest["plan"] = [1, 2]
    elif damage == "no-vocab_size":
        del manifest["vocab_size"]
    elif damage == "no-base":
        del manifest["base"]
    else:
        manifest = [manifest]
    (out / "manifest.json").write_text(json.dumps(manifest))
    if command == "verify":
        refused_in_place(capsys, run_cli("verify", out, "-q", "--device", "cpu"), "manifest")
    else:
        # inspect reports what it can read; a damaged manifest must not crash it
        rc = run_cli("inspect", out, "--json")
        captured = capsys.readouterr()
        assert rc in (0, 2), captured.err
        assert "Traceback" not in captured.err
        if rc == 2:
            assert len(captured.err.splitlines()) == 1 and "manifest" in captured.err, captured.err
