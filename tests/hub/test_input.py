"""BASE as a Hub id (ropeconv.hub.base), against an on-disk Hugging Face cache laid out as huggingface_hub lays it
out (models--ORG--NAME/refs/REVISION holding the commit, snapshots/COMMIT/FILE linked to blobs/SHA), offline:
huggingface_hub's own snapshot_download / hf_hub_download resolve it, nothing in ropeconv is mocked."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import constants, errors
from huggingface_hub.utils import filter_repo_objects

from ropeconv.gguf_io.reader import read_gguf
from ropeconv.hub.base import HubRef, first_files, parse_ref, refusal, weight_files
from ropeconv.provenance import HUB_KEY
from ropeconv.provenance.gguf import recorded_hub
from tests.conftest import add_byte_level_tokenizer, assert_refused, listing, make_tiny, read_json, run_cli

COMMIT = "a" * 40
COMMIT2 = "b" * 40
EXTEND = ("--method", "yarn", "--factor", "2", "--no-verify", "-q")


class HubCache:
    """A Hugging Face cache under a folder: repos added as huggingface_hub's downloads leave them."""

    def __init__(self, root: Path):
        self.root = root

    def add(self, repo_id: str, files: dict[str, Path], commit: str, ref: str | None = "main") -> Path:
        storage = self.root / ("models--" + repo_id.replace("/", "--"))
        snapshot = storage / "snapshots" / commit
        for rel, src in files.items():
            data = src.read_bytes()
            blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        if ref is not None:
            (storage / "refs").mkdir(parents=True, exist_ok=True)
            (storage / "refs" / ref).write_text(commit)  # no newline: huggingface_hub reads it as it is
        return snapshot

    def add_folder(self, repo_id: str, folder: Path, commit: str, ref: str | None = "main",
                   extra: dict[str, Path] | None = None) -> Path:
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.add(repo_id, {**files, **(extra or {})}, commit, ref)


@pytest.fixture
def hub(tmp_path, monkeypatch) -> HubCache:
    """HF_HOME and the cache in tmp_path, offline; huggingface_hub read both at import, so its constants too. The
    working directory holds no ORG/NAME folder."""
    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return HubCache(cache)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The tiny llama with a tokenizer and a card (README.md carries its license into the output's card)."""
    folder = add_byte_level_tokenizer(make_tiny(tmp_path_factory.mktemp("model"), "llama", name="tiny"))
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    return folder


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """The same model in shards (model.safetensors.index.json and model-0000N-of-0000M.safetensors)."""
    folder = add_byte_level_tokenizer(make_tiny(tmp_path_factory.mktemp("sharded"), "llama", name="tiny",
                                                max_shard_size="300KB"))
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    return folder


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_hub_id_gives_the_outputs_of_its_snapshot_folder(hub, model, tmp_path, capsys):
    snapshot = hub.add_folder("org/tiny", model, COMMIT)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("extend", "org/tiny", *EXTEND, "--to", "safetensors,gguf", "-o", a) == 0, capsys.readouterr().err
    assert run_cli("extend", snapshot, *EXTEND, "--to", "safetensors,gguf", "-o", b) == 0, capsys.readouterr().err
    da, db = digests(a), digests(b)
    assert sorted(da) == sorted(db) and "tiny-F16.gguf" in da  # named by the repo, not by its commit folder
    assert {k: v for k, v in da.items() if k != "manifest.json"} == {k: v for k, v in db.items()
                                                                     if k != "manifest.json"}
    ma, mb = read_json(a / "manifest.json"), read_json(b / "manifest.json")
    # exactly one difference: the Hub id's run records what was asked and the commit it read
    assert ma["base"].pop("hub") == {"repo_id": "org/tiny", "revision": "main", "commit": COMMIT}
    assert "hub" not in mb["base"] and ma == mb
    assert ma["base"]["path"] == str(snapshot.resolve())
    card = (a / "README.md").read_text()
    assert "base_model: org/tiny" in card and f"org/tiny) at commit {COMMIT}" in card and "license: mit" in card
    assert run_cli("verify", a, "--tokens", "16", "--device", "cpu") == 0, capsys.readouterr().err


def test_a_local_folder_of_that_name_is_local(hub, model, capsys):
    hub.add_folder("org/tiny", model, COMMIT)
    shutil.copytree(model, Path("org/tiny"))  # in the working directory: the path exists, so it is the base
    assert run_cli("extend", "org/tiny", *EXTEND, "-o", "out") == 0, capsys.readouterr().err
    manifest = read_json(Path("out/manifest.json"))
    assert "hub" not in manifest["base"] and manifest["base"]["path"] == str(Path("org/tiny").resolve())


def test_a_revision_is_a_branch_or_a_commit(hub, model, tmp_path, capsys):
    hub.add_folder("org/tiny", model, COMMIT)
    second = hub.add_folder("org/tiny", model, COMMIT2, ref="v2")
    for asked in ("v2", COMMIT2):
        out = tmp_path / f"out-{asked[:4]}"
        assert run_cli("extend", f"org/tiny@{asked}", *EXTEND, "-o", out) == 0, capsys.readouterr().err
        manifest = read_json(out / "manifest.json")
        assert manifest["base"]["hub"] == {"repo_id": "org/tiny", "revision": asked, "commit": COMMIT2}
        assert manifest["base"]["path"] == str(second.resolve())


@pytest.mark.parametrize("given,mentions", [
    ("org/tiny@v9", ("revision v9 of org/tiny", "not in the hugging face cache", "HF_HUB_OFFLINE")),
    ("org/nothing", ("org/nothing is not in the hugging face cache", "HF_HUB_OFFLINE")),
    ("org/nothing@v2", ("org/nothing@v2: org/nothing is not",)),
    ("org/tiny-gguf:missing.gguf", ("missing.gguf of org/tiny-gguf@main", "not in the hugging face cache")),
    ("org/tiny-gguf@v9:tiny-F16.gguf", ("revision v9 of org/tiny-gguf",)),
    ("org/tiny:config.json", ("only a .gguf file",)),
    ("org/gguf-only", ("config.json of org/gguf-only@main is not", "org/gguf-only:FILE.gguf")),
])
def test_what_cannot_be_resolved_is_one_line(hub, model, tmp_path, capsys, given, mentions):
    hub.add_folder("org/tiny", model, COMMIT)
    hub.add("org/tiny-gguf", {"tiny-F16.gguf": model / "config.json"}, COMMIT)  # a stand-in: never read
    hub.add("org/gguf-only", {"tiny-F16.gguf": model / "config.json"}, COMMIT)
    out = tmp_path / "outputs" / ("out.gguf" if ".gguf" in given else "out")
    out.parent.mkdir()
    rc = run_cli("extend", given, *EXTEND, "-o", out)
    assert_refused(capsys, rc, out, [], mentions=(given, *mentions))


def test_a_shard_the_cache_lacks_is_named(hub, sharded, tmp_path, capsys):
    snapshot = hub.add_folder("org/sharded", sharded, COMMIT)
    shard = sorted(snapshot.glob("model-*.safetensors"))[-1]
    shard.unlink()
    out = tmp_path / "outputs" / "out"
    out.parent.mkdir()
    rc = run_cli("extend", "org/sharded", *EXTEND, "-o", out)
    assert_refused(capsys, rc, out, [], mentions=(f"{shard.name} of org/sharded@main", "not in the hugging face cache"))


def test_a_snapshot_its_cached_listing_shows_incomplete_names_what_is_missing(hub, model, tmp_path, capsys):
    """A snapshot_download that ran online left the commit's file listing (trees/COMMIT.json); offline, a file of
    it the run reads and the snapshot lacks is named (optimizer.pt, which the run does not read, is not)."""
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

    snapshot = hub.add_folder("org/tiny", model, COMMIT)
    listed = [p.name for p in snapshot.iterdir()] + ["optimizer.pt"]
    write_tree_cache(str(snapshot.parent.parent), COMMIT, {name: TreeCacheEntry(size=1, blob_id="0" * 40)
                                                           for name in listed})
    (snapshot / "tokenizer.json").unlink()
    out = tmp_path / "outputs" / "out"
    out.parent.mkdir()
    rc = run_cli("extend", "org/tiny", *EXTEND, "-o", out)
    line = assert_refused(capsys, rc, out, [], mentions=("org/tiny", "incomplete", "tokenizer.json", "HF_HUB_OFFLINE"))
    assert "optimizer.pt" not in line


def test_no_network_uses_the_cache_or_says_what_it_lacks(hub, model, tmp_path, monkeypatch, capsys):
    """Online, with the Hub unreachable (an endpoint that refuses connections): a cached repo is read from the
    cache, one that is not is one line naming it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    hub.add_folder("org/tiny", model, COMMIT)
    out = tmp_path / "outputs" / "out"
    out.parent.mkdir()
    assert run_cli("extend", "org/tiny", *EXTEND, "-o", out) == 0, capsys.readouterr().err
    assert read_json(out / "manifest.json")["base"]["hub"]["commit"] == COMMIT
    missing = tmp_path / "outputs" / "missing"
    rc = run_cli("extend", "org/nothing", *EXTEND, "-o", missing)
    assert_refused(capsys, rc, missing, ["out"], mentions=("org/nothing is not in the hugging face cache",
                                                           "the hub cannot be reached"))


def test_a_gguf_in_a_repo(hub, model, tmp_path, capsys):
    made = tmp_path / "made"
    assert run_cli("extend", model, "--method", "none", "--to", "gguf", "--no-verify", "-q", "-o", made) == 0, \
        capsys.readouterr().err
    gguf = made / "tiny-F16.gguf"
    snapshot = hub.add("org/tiny-gguf", {"tiny-F16.gguf": gguf, "README.md": model / "README.md"}, COMMIT)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert run_cli("extend", "org/tiny-gguf:tiny-F16.gguf", *EXTEND, "-o", a) == 0, capsys.readouterr().err
    assert run_cli("extend", snapshot / "tiny-F16.gguf", *EXTEND, "-o", b) == 0, capsys.readouterr().err
    capsys.readouterr()
    # one file has no manifest: the Hub base is recorded in the file, and is all that differs from the local run
    ra, rb = read_gguf(a), read_gguf(b)
    assert recorded_hub(ra) == {"repo_id": "org/tiny-gguf", "revision": "main", "commit": COMMIT,
                                "file": "tiny-F16.gguf"}
    assert recorded_hub(rb) is None
    assert {f.key: f.value for f in ra.fields if f.key != HUB_KEY} == {f.key: f.value for f in rb.fields}
    da, db = a.read_bytes(), b.read_bytes()
    assert [(t.name, da[t.offset:t.offset + t.nbytes]) for t in ra.tensors] == \
        [(t.name, db[t.offset:t.offset + t.nbytes]) for t in rb.tensors]
    assert run_cli("inspect", a) == 0
    assert f"base (Hub)       org/tiny-gguf@main:tiny-F16.gguf, commit {COMMIT}" in capsys.readouterr().out


def test_a_recipe_names_a_hub_id(hub, sharded, tmp_path, capsys):
    snapshot = hub.add_folder("org/sharded", sharded, COMMIT)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    recipe = recipes / "r.yaml"
    recipe.write_text("base:\n  path: org/sharded\nmethod:\n  name: yarn\n  factor: 2\noutputs:\n  - format: safetensors\n"
                      "out: r-out\nparity:\n  verify: false\n")
    assert run_cli("recipe", "run", recipe, "-q") == 0, capsys.readouterr().err
    manifest = read_json(recipes / "r-out" / "manifest.json")
    assert manifest["base"]["hub"] == {"repo_id": "org/sharded", "revision": "main", "commit": COMMIT}
    assert run_cli("extend", snapshot, *EXTEND, "-o", tmp_path / "direct") == 0, capsys.readouterr().err
    direct = digests(tmp_path / "direct")
    assert {k: v for k, v in digests(recipes / "r-out").items() if k != "manifest.json"} == \
        {k: v for k, v in direct.items() if k != "manifest.json"}
    capsys.readouterr()
    assert run_cli("recipe", "run", recipe) == 0  # the same commit: up to date
    assert "up to date" in capsys.readouterr().out
    # a base the recipe's folder holds is that folder, as any relative path
    shutil.copytree(sharded, recipes / "org" / "sharded")
    assert run_cli("recipe", "run", recipe, "-q", "--force") == 0, capsys.readouterr().err
    assert "hub" not in read_json(recipes / "r-out" / "manifest.json")["base"]


def test_recipe_check_needs_neither_the_base_nor_the_hub(hub, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base:\n  path: org/not-cached@v1\nmethod:\n  name: yarn\n  factor: 2\noutputs:\n"
                      "  - format: safetensors\nout: r-out\n")
    assert run_cli("recipe", "check", recipe) == 0, capsys.readouterr().err
    rc = run_cli("recipe", "run", recipe)
    line = assert_refused(capsys, rc, tmp_path / "r-out", listing(tmp_path), mentions=("org/not-cached@v1",))
    assert line.startswith(f"ropeconv: error: {recipe}: ")


def test_save_recipe_keeps_the_hub_id(hub, model, tmp_path, capsys):
    hub.add_folder("org/tiny", model, COMMIT)
    saved = tmp_path / "saved.yaml"
    assert run_cli("extend", "org/tiny@main", *EXTEND, "--dry-run", "--save-recipe", saved, "-o", tmp_path / "o") == 0
    assert "path: org/tiny\n" in saved.read_text()


def test_only_the_files_a_run_reads_are_fetched(sharded):
    repo = ["config.json", "generation_config.json", "README.md", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "merges.txt", "vocab.json", "chat_template.jinja", "model.safetensors",
            "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
            "consolidated.safetensors", "optimizer.pt", "pytorch_model.bin", "pytorch_model-00001-of-00002.bin",
            "training_args.bin", "onnx/model.onnx", "onnx/config.json", "original/consolidated.00.pth",
            "model-Q4_K_M.gguf", ".gitattributes", "flax_model.msgpack", "tf_model.h5"]
    first = list(filter_repo_objects(repo, allow_patterns=list(first_files())))
    assert first == ["config.json", "generation_config.json", "README.md", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "merges.txt", "vocab.json", "chat_template.jinja", "model.safetensors",
                     "model.safetensors.index.json"]
    # the shards: those the index names, fetched by name
    shards = weight_files(sharded, allow_pickle=False)
    assert shards == sorted(p.name for p in sharded.glob("model-*.safetensors")) and len(shards) > 1
    assert list(filter_repo_objects(list(dict.fromkeys(repo + shards)), allow_patterns=shards)) == shards
    # pickles only with --allow-pickle, and only when the repo has no safetensors
    bare = sharded.parent / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    assert weight_files(bare, allow_pickle=False) == []
    pickles = weight_files(bare, allow_pickle=True)
    assert list(filter_repo_objects(repo, allow_patterns=pickles)) == ["pytorch_model.bin",
                                                                     "pytorch_model-00001-of-00002.bin"]
    single = sharded.parent / "single"
    single.mkdir()
    (single / "model.safetensors").write_bytes(b"")
    assert weight_files(single, allow_pickle=True) == []


@pytest.mark.parametrize("text,ref", [
    ("org/name", HubRef("org/name", None, None)),
    ("org/name@v1.0", HubRef("org/name", "v1.0", None)),
    ("org/name@refs/pr/1", HubRef("org/name", "refs/pr/1", None)),
    ("org/name:sub/m-Q4_K_M.gguf", HubRef("org/name", None, "sub/m-Q4_K_M.gguf")),
    (f"org/name@{COMMIT}:m.gguf", HubRef("org/name", COMMIT, "m.gguf")),
    ("name", None), ("./org/name", None), ("/org/name", None), ("org/na--me", None), ("org/name/x", None),
    ("a/b c", None),
])
def test_the_hub_id_form(text, ref):
    assert parse_ref(text) == ref
    if ref is not None:
        assert ref.text == text


def _response(status: int) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/org/name"))


@pytest.mark.parametrize("exc,mentions", [
    (errors.GatedRepoError("gated", response=_response(403)), ("gated", "HF_TOKEN", "https://huggingface.co/org/name")),
    (errors.RepositoryNotFoundError("404", response=_response(404)), ("no model repo org/name", "HF_TOKEN")),
    (errors.RevisionNotFoundError("404", response=_response(404)), ("no revision 'v3'",)),
    (errors.RemoteEntryNotFoundError("404", response=_response(404)), ("has no file m.gguf",)),
    (errors.DisabledRepoError("403", response=_response(403)), ("disabled",)),
    (errors.HfHubHTTPError("500 Server Error\nmore", response=_response(500)), ("fetching from the Hub failed",
                                                                               "500 Server Error")),
])
def test_the_hubs_errors_are_one_line_each(hub, exc, mentions):
    """What the Hub answers online (huggingface_hub's own exception types), each one line naming what was asked."""
    line = refusal(exc, HubRef("org/name", "v3", "m.gguf"))
    assert "\n" not in line and line.startswith("org/name@v3:m.gguf: ")
    for word in mentions:
        assert word in line, line


def test_extend_help_and_recipe_check_load_no_huggingface_hub(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base:\n  path: org/name\nmethod:\n  name: yarn\n  factor: 2\noutputs:\n"
                      "  - format: safetensors\nout: r-out\n")
    code = ("import contextlib, io, sys\nfrom ropeconv.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['extend', '--help']) == 0 and main(['recipe', 'check', {str(recipe)!r}]) == 0\n"
            "assert 'huggingface_hub' not in sys.modules, 'huggingface_hub imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_turns_the_download_bars_off(hub, model, tmp_path, quiet):
    """-q silences huggingface_hub's own bars (HF_HUB_DISABLE_PROGRESS_BARS, and its switch once imported); without
    -q they stay as huggingface_hub has them. Run in a fresh interpreter: the switch is the process's."""
    hub.add_folder("org/tiny", model, COMMIT)
    args = ["extend", "org/tiny", *EXTEND[:-1], "-o", str(tmp_path / "out")] + (["-q"] if quiet else [])
    code = ("import os, sys\nfrom ropeconv.cli.main import main\n"
            f"assert main({args!r}) == 0\n"
            "from huggingface_hub.utils import are_progress_bars_disabled\n"
            "print(are_progress_bars_disabled(), os.environ.get('HF_HUB_DISABLE_PROGRESS_BARS'))\n")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1].split() == (["True", "1"] if quiet else ["False", "None"])
