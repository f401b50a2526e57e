"""Model cards the Hub reads (huggingface_hub's ModelCard, offline), --name everywhere, -o with missing parents, a Hub
id as the base, and progress per parity pass."""

from __future__ import annotations

import pytest
import yaml

from ropeconv.gguf_io.reader import read_gguf
from tests.conftest import add_byte_level_tokenizer, assert_refused, listing, make_tiny, run_cli


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return add_byte_level_tokenizer(make_tiny(tmp_path_factory.mktemp("card"), "llama"))


def load_card(path):
    from huggingface_hub import ModelCard

    return ModelCard.load(path)  # a local file: read as is, nothing fetched


def test_card_metadata_and_name_everywhere(base, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "safetensors,gguf", "-o", out,
                   "--name", "Tiny-YaRN-256", "--base-model", "org/tiny-llama", "--license", "mit", "--tag",
                   "tiny", "--tag", "test", "--no-verify", "-q") == 0
    card = load_card(out / "README.md")
    assert card.data.base_model == "org/tiny-llama" and card.data.base_model_relation == "finetune"
    assert card.data.license == "mit" and card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert {"tiny", "test", "long-context", "yarn", "gguf"} <= set(card.data.tags)
    assert card.text.lstrip().startswith("# Tiny-YaRN-256\n")
    assert (out / "Tiny-YaRN-256-F16.gguf").is_file()
    assert read_gguf(out / "Tiny-YaRN-256-F16.gguf").value("general.name") == "Tiny-YaRN-256"


def test_plain_extend_writes_the_metadata_block_and_takes_the_base_cards_license(base, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    carded = tmp_path / "carded"
    carded.mkdir()
    for f in base.iterdir():
        (carded / f.name).symlink_to(f)
    (carded / "README.md").write_text("---\nlicense: llama2\nbase_model: someone/grandparent\ntags:\n- base-tag\n---\n"
                                      "# the base\n")
    for formats, library in (("safetensors", "transformers"), ("gguf", "gguf"), ("onnx", "onnx")):
        out = tmp_path / formats
        assert run_cli("extend", carded, "--method", "linear", "--factor", "2", "--to", formats, "-o", out,
                       "--no-verify", "-q") == 0
        data = load_card(out / "README.md").data
        assert data.library_name == library and data.pipeline_tag == "text-generation"
        assert data.license == "llama2"  # the base's license carries over
        assert data.base_model is None  # the base card's own base_model is its parent, not ours
        assert "long-context" in data.tags and "base-tag" not in data.tags


def test_a_base_in_the_hub_cache_names_itself(base, tmp_path):
    snapshot = tmp_path / "hub" / "models--org--tiny-llama" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for f in base.iterdir():
        (snapshot / f.name).symlink_to(f)
    out = tmp_path / "out"
    assert run_cli("extend", snapshot, "--method", "linear", "--factor", "2", "-o", out, "--no-verify", "-q") == 0
    assert load_card(out / "README.md").data.base_model == "org/tiny-llama"


def test_missing_parents_are_created_and_removed_when_the_run_fails(base, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "out"
    assert run_cli("extend", base, "--method", "linear", "--factor", "2", "-o", out, "--no-verify", "-q") == 0
    assert (out / "model.safetensors").is_file()

    # parity fails (an impossible tolerance): nothing published, and the folders made for it are gone again
    failed = tmp_path / "made" / "for" / "out"
    assert run_cli("extend", base, "--method", "linear", "--factor", "2", "-o", failed, "--tokens", "128",
                   "--max-abs-logit", "1e-30", "-q") == 1
    assert listing(tmp_path) == ["new"]

    # bad input: refused before anything is made
    capsys.readouterr()
    before = listing(tmp_path)
    rc = run_cli("extend", base, "--method", "linear", "--factor", "0.5", "-o", tmp_path / "never" / "out")
    assert rc == 2 and listing(tmp_path) == before
    capsys.readouterr()

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    before = listing(tmp_path)
    rc = run_cli("extend", base, "--method", "linear", "--factor", "2", "-o", blocker / "out")
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("ropeconv: error: ") and len(err.splitlines()) == 1, err
    assert "a-file is not a folder" in err and listing(tmp_path) == before


def test_a_hub_id_given_to_a_command_that_reads_a_local_copy_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    """`extend` and recipes fetch a Hub id (tests/hub/test_input.py); the other commands that take a base read a
    local copy and say how to make one."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    rc = run_cli("inspect", "meta-llama/Llama-2-7b-hf")
    line = assert_refused(capsys, rc, out, listing(tmp_path))
    assert "hf download meta-llama/Llama-2-7b-hf --local-dir Llama-2-7b-hf" in line
    assert "huggingface-cli download" in line and "local" in line and "ropeconv extend" in line


@pytest.mark.parametrize("args,mentions", [
    (("--name", "bad/name"), ("--name",)),
    (("--name", ".hidden"), ("--name",)),
    (("--base-model", "not a repo id"), ("--base-model",)),
    (("--tag", ""), ("tag",)),
])
def test_bad_card_options_are_refused(base, tmp_path, capsys, args, mentions):
    out = tmp_path / "out"
    rc = run_cli("extend", base, "--method", "linear", "--factor", "2", "-o", out, *args)
    assert_refused(capsys, rc, out, listing(tmp_path), mentions=mentions)


def test_gguf_base_takes_name_and_refuses_card_options(base, tmp_path, capsys):
    converted = tmp_path / "conv"
    assert run_cli("extend", base, "--method", "none", "--to", "gguf", "--outtype", "f32", "-o", converted,
                   "--no-verify", "-q") == 0
    gguf = next(converted.glob("*.gguf"))
    out = tmp_path / "named.gguf"
    assert run_cli("extend", gguf, "--method", "linear", "--factor", "2", "--name", "Renamed", "-o", out,
                   "--no-verify", "-q") == 0
    assert read_gguf(out).value("general.name") == "Renamed"
    capsys.readouterr()
    refused = tmp_path / "refused.gguf"
    rc = run_cli("extend", gguf, "--method", "linear", "--factor", "2", "--license", "mit", "-o", refused)
    assert_refused(capsys, rc, refused, listing(tmp_path), mentions=("--license", "model card"))


def test_saved_recipe_keeps_card_options_and_name(base, tmp_path):
    recipe = tmp_path / "r.yaml"
    assert run_cli("extend", base, "--method", "linear", "--factor", "2", "-o", tmp_path / "out", "--name", "N-1",
                   "--card-title", "A title", "--license", "mit", "--tag", "a", "--base-model", "org/x",
                   "--save-recipe", recipe, "--dry-run") == 0
    data = yaml.safe_load(recipe.read_text())
    assert data["name"] == "N-1"
    assert data["card"] == {"title": "A title", "license": "mit", "tags": ["a"], "base_model": "org/x"}


def test_progress_per_pass_with_tokens_and_quiet(base, tmp_path, capsys):
    capsys.readouterr()
    assert run_cli("extend", base, "--method", "dynamic", "--factor", "2", "-o", tmp_path / "a", "--tokens", "128") == 0
    err = capsys.readouterr().err
    # dynamic NTK: a pass below the original context and one across it, for the reference and the candidate
    assert err.count("pass 1/2 (short): 64 tokens at positions 0–63 done in") == 2, err
    assert err.count("pass 2/2 (probe): 128 tokens at positions 0–127 done in") == 2, err
    assert run_cli("extend", base, "--method", "dynamic", "--factor", "2", "-o", tmp_path / "b", "--tokens", "128",
                   "-q") == 0
    assert capsys.readouterr().err == ""
