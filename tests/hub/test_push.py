"""Publishing to the Hub: what `extend --push-to-hub`, a recipe's `push:` and `ropeconv push` would send, read from
huggingface_hub's own calls (HfApi.create_repo and HfApi.create_commit replaced on the class by recorders: nothing
reaches the network), and what a refused or failed run sends (nothing)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx2
import pytest
import yaml
from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import HfHubHTTPError

from tests.conftest import ORIGINAL_CTX, add_byte_level_tokenizer, make_tiny, run_cli


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return add_byte_level_tokenizer(make_tiny(tmp_path_factory.mktemp("push-base"), "llama"))


@pytest.fixture
def hub(monkeypatch):
    """The calls a push makes, recorded instead of sent; a token present, the Hub reachable as far as the checks
    can tell (whatever HF_TOKEN / HF_HUB_OFFLINE the machine has)."""
    calls: list[tuple[str, tuple, dict]] = []

    def create_repo(self, *args, **kwargs):
        calls.append(("create_repo", args, kwargs))

    def create_commit(self, *args, **kwargs):
        calls.append(("create_commit", args, kwargs))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_sent_anywhere")
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return calls


def files_of(out: Path) -> list[str]:
    """An independent listing of the folder (not the manifest's)."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def commit_of(calls: list, repo: str, private: bool = True) -> dict:
    """The one create_repo and the one create_commit, in that order; the commit's keyword arguments."""
    assert [name for name, _, _ in calls] == ["create_repo", "create_commit"], calls
    (_, repo_args, repo_kwargs), (_, commit_args, commit_kwargs) = calls
    assert repo_args == (repo,) and repo_kwargs == {"private": private, "exist_ok": True, "repo_type": "model"}
    assert commit_args == (repo,)
    return commit_kwargs


def check_operations(operations: list, out: Path) -> None:
    """One CommitOperationAdd per file of the output folder, at its path there, with that file's bytes."""
    assert all(isinstance(op, CommitOperationAdd) for op in operations)
    assert [op.path_in_repo for op in operations] == files_of(out)
    for op in operations:
        sent = op.path_or_fileobj
        data = Path(sent).read_bytes() if isinstance(sent, (str, Path)) else sent
        assert data == (out / op.path_in_repo).read_bytes(), op.path_in_repo


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: ") and "Traceback" not in err, err
    return lines[0]


LENGTHS = f"yarn {ORIGINAL_CTX} → {4 * ORIGINAL_CTX}"


def test_extend_pushes_every_file_of_the_published_output_in_one_commit(base, tmp_path, hub, capsys):
    out = tmp_path / "out"
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "safetensors,gguf", "--no-verify",
                 "--push-to-hub", "me/x", "-q", "-o", out)
    assert rc == 0, capsys.readouterr().err
    assert "pushed to me/x" in capsys.readouterr().out
    commit = commit_of(hub, "me/x")
    assert any(name.endswith(".gguf") for name in files_of(out)) and "model.safetensors" in files_of(out)
    assert {"manifest.json", "README.md", "config.json"} <= set(files_of(out))
    check_operations(list(commit["operations"]), out)
    assert commit["commit_message"] == f"ropeconv: {LENGTHS}; parity not checked (--no-verify)"


def test_a_verified_push_names_each_formats_parity(base, tmp_path, hub, capsys):
    out = tmp_path / "out"
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "safetensors,gguf", "--device", "cpu",
                 "--push-to-hub", "me/proven", "--public", "-q", "-o", out)
    assert rc == 0, capsys.readouterr().err
    commit = commit_of(hub, "me/proven", private=False)
    check_operations(list(commit["operations"]), out)
    number = r"\d\.\de-?\d+|0"
    assert re.fullmatch(rf"ropeconv: {LENGTHS}; parity passed: transformers ({number}), llama\.cpp ({number})",
                        commit["commit_message"]), commit["commit_message"]


def test_a_gguf_base_pushes_its_one_file(base, tmp_path, hub, capsys):
    first = tmp_path / "first.gguf"
    assert run_cli("extend", base, "--method", "none", "--to", "gguf", "--no-verify", "-q", "-o", tmp_path / "conv") \
        == 0
    source = next((tmp_path / "conv").glob("*.gguf"))
    rc = run_cli("extend", source, "--method", "yarn", "--factor", "4", "--no-verify", "--push-to-hub", "me/g",
                 "-q", "-o", first)
    assert rc == 0, capsys.readouterr().err
    commit = commit_of(hub, "me/g")
    [op] = commit["operations"]
    assert op.path_in_repo == "first.gguf" and Path(op.path_or_fileobj).read_bytes() == first.read_bytes()
    assert commit["commit_message"] == f"ropeconv: {LENGTHS}; parity not checked (--no-verify)"
    hub.clear()  # `ropeconv push` takes the one file too (its plan read back from the GGUF)
    assert run_cli("push", first, "me/g") == 0
    [op] = commit_of(hub, "me/g")["operations"]
    assert op.path_in_repo == "first.gguf" and Path(op.path_or_fileobj).read_bytes() == first.read_bytes()
    hub.clear()  # a .gguf of an output folder is checked against that folder's manifest
    data = bytearray(source.read_bytes())
    data[-1] ^= 1
    source.write_bytes(bytes(data))
    capsys.readouterr()
    assert run_cli("push", source, "me/g") == 1
    assert "sha256 differs" in one_error_line(capsys) and hub == []
    stray = tmp_path / "stray.gguf"
    stray.write_bytes(b"GGUF" + b"\0" * 60)
    assert run_cli("push", stray, "me/g") == 2 and hub == []
    one_error_line(capsys)


def test_a_failed_parity_pushes_nothing(base, tmp_path, hub, capsys):
    out = tmp_path / "out"
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--device", "cpu", "--max-abs-logit", "1e-12",
                 "--push-to-hub", "me/x", "-q", "-o", out)
    assert rc == 1
    assert one_error_line(capsys).startswith("ropeconv: error: parity failed")
    assert hub == [] and not out.exists()


@pytest.mark.parametrize("args", [("--push-to-hub", "bad id"), ("--push-to-hub", "a/b/c"), ("--push-to-hub", "me/x--y"),
                                  ("--public",)])
def test_a_bad_repo_id_is_refused_before_any_work(base, tmp_path, hub, capsys, args):
    out = tmp_path / "outputs" / "out"
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--no-verify", *args, "-q", "-o", out)
    assert rc == 2
    line = one_error_line(capsys)
    assert ("--push-to-hub" in line) if args[0] == "--push-to-hub" else "--public applies with --push-to-hub" in line
    assert hub == [] and not (tmp_path / "outputs").exists()


def test_no_token_or_offline_is_refused_before_any_work(base, tmp_path, hub, monkeypatch, capsys):
    import huggingface_hub

    out = tmp_path / "outputs" / "out"
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--no-verify", "--push-to-hub", "me/x",
                   "-q", "-o", out) == 2
    assert "no Hugging Face token" in one_error_line(capsys)
    monkeypatch.undo()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--no-verify", "--push-to-hub", "me/x",
                   "-q", "-o", out) == 2
    assert "HF_HUB_OFFLINE" in one_error_line(capsys)
    assert not (tmp_path / "outputs").exists()


def _http_error():
    request = httpx2.Request("POST", "https://huggingface.co/api/models/me/x/commit/main")
    return HfHubHTTPError("401 Unauthorized: invalid token", response=httpx2.Response(401, request=request))


@pytest.mark.parametrize("failure", [_http_error, lambda: OSError("Connection reset by peer")])
def test_a_failed_upload_leaves_the_output_published(base, tmp_path, hub, monkeypatch, capsys, failure):
    def create_commit(self, *args, **kwargs):
        raise failure()

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    out, saved = tmp_path / "out", tmp_path / "saved.yaml"
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--no-verify", "--push-to-hub", "me/x", "-q",
                 "--save-recipe", saved, "-o", out)
    assert rc == 75
    line = one_error_line(capsys)
    assert f"{out} was published, but the push to me/x failed" in line and f"ropeconv push {out} me/x" in line, line
    assert (out / "manifest.json").is_file() and (out / "model.safetensors").is_file()
    assert yaml.safe_load(saved.read_text())["push"] == "me/x"  # published: the recipe is saved with it


def test_push_command_sends_an_existing_output(base, tmp_path, hub, capsys):
    out = tmp_path / "out"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "safetensors,gguf", "--no-verify",
                   "-q", "-o", out) == 0
    (out / "notes.txt").write_text("mine, not the output's")  # a file the manifest does not list stays behind
    capsys.readouterr()
    assert run_cli("push", out, "me/y") == 0
    commit = commit_of(hub, "me/y")
    (out / "notes.txt").unlink()
    check_operations(list(commit["operations"]), out)
    assert commit["commit_message"] == f"ropeconv: {LENGTHS}; parity not checked (--no-verify)"
    hub.clear()
    assert run_cli("push", out, "me/y", "--public", "--message", "release 1") == 0
    commit = commit_of(hub, "me/y", private=False)
    assert commit["commit_message"] == "release 1"


def test_push_command_refuses_what_is_not_a_proven_output(base, tmp_path, hub, capsys):
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "model.safetensors").write_bytes(b"\0" * 16)
    assert run_cli("push", stranger, "me/y") == 2
    assert "not a ropeconv output" in one_error_line(capsys)
    assert run_cli("push", base, "me/y") == 2  # a model folder, not an output
    one_error_line(capsys)
    out = tmp_path / "out"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--no-verify", "-q", "-o", out) == 0
    config = out / "config.json"
    config.write_text(config.read_text().replace("yarn", "yarm"))  # same size, other bytes
    capsys.readouterr()
    assert run_cli("push", out, "me/y") == 1  # what was proven is not what is there, as `ropeconv verify` says
    line = one_error_line(capsys)
    assert "config.json (sha256 differs)" in line and "nothing pushed" in line, line
    assert run_cli("push", out, "not a repo") == 2
    one_error_line(capsys)
    assert hub == []


def test_a_recipe_pushes_and_save_recipe_writes_the_keys(base, tmp_path, hub, capsys):
    saved = tmp_path / "saved.yaml"
    out = tmp_path / "direct"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--no-verify", "--push-to-hub", "me/r",
                   "--public", "-q", "--save-recipe", saved, "-o", out) == 0
    data = yaml.safe_load(saved.read_text())
    assert data["push"] == "me/r" and data["private"] is False
    direct = commit_of(hub, "me/r", private=False)
    hub.clear()
    again = tmp_path / "again"
    assert run_cli("recipe", "run", saved, "--set", f"out={again}", "-q") == 0
    commit = commit_of(hub, "me/r", private=False)
    check_operations(list(commit["operations"]), again)
    assert commit["commit_message"] == direct["commit_message"]
    assert [op.path_in_repo for op in commit["operations"]] == [op.path_in_repo for op in direct["operations"]]
    # up to date: nothing rebuilt, nothing pushed, and the line says how to push it
    hub.clear()
    capsys.readouterr()
    assert run_cli("recipe", "run", saved, "--set", f"out={again}") == 0
    assert hub == [] and f"ropeconv push {again} me/r" in capsys.readouterr().out
    # push is not part of what the output is: the same recipe without it is up to date too
    data.pop("push"), data.pop("private")
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert run_cli("recipe", "run", plain, "--set", f"out={again}", "--json") == 0
    assert '"skipped": true' in capsys.readouterr().out and hub == []
