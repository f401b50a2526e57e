"""The output directory: config for transformers 4.x and 5.x, sharding, aux files, card, manifest,
byte-identical reruns."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ropeconv.positions import RopePlan, inv_freq_at
from tests.conftest import ORIGINAL_CTX, add_byte_level_tokenizer, make_tiny, read_json, run_cli


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_runs_are_byte_identical(tiny_llama, tmp_path):
    for name in ("a", "b"):
        assert run_cli("extend", tiny_llama, "--method", "yarn", "--factor", "4", "-o", tmp_path / name,
                       "--tokens", "128", "-q") == 0
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert {k for k in a if a[k] != b[k]} == set()


def test_manifest_lists_every_file_with_hash_and_versions(tiny_llama, tmp_path):
    out = tmp_path / "out"
    assert run_cli("extend", tiny_llama, "--method", "linear", "--factor", "2", "-o", out, "--tokens", "96", "-q") == 0
    manifest = read_json(out / "manifest.json")
    files = {p.name for p in out.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    for name, record in manifest["files"].items():
        assert record["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert record["bytes"] == (out / name).stat().st_size
    assert manifest["ropeconv_version"]
    assert {"torch", "transformers", "safetensors"} <= set(manifest["libraries"])
    assert manifest["plan"]["method"] == "linear" and manifest["parity"]["safetensors"]["passed"] is True
    card = (out / "README.md").read_text()
    for needle in ("linear", f"| original context | {ORIGINAL_CTX} |", f"| target context | {2 * ORIGINAL_CTX} |",
                   "passed", tiny_llama.name):
        assert needle in card


def test_sharded_input_and_output_round_trip(tmp_path):
    base = make_tiny(tmp_path, "llama", max_shard_size="100KB")
    assert (base / "model.safetensors.index.json").is_file()
    out = tmp_path / "out"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "2", "-o", out, "--max-shard-size", "150KB",
                   "--tokens", "128", "-q") == 0
    index = read_json(out / "model.safetensors.index.json")
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert all((out / s).stat().st_size <= 150_000 + 4096 or _single_tensor(out / s) for s in shards)
    source = {}
    for f in base.glob("*.safetensors"):
        with safe_open(f, "pt") as fh:
            source.update({k: fh.get_tensor(k) for k in fh.keys()})
    seen = {}
    for s in shards:
        with safe_open(out / s, "pt") as fh:
            seen.update({k: fh.get_tensor(k) for k in fh.keys()})
    assert seen.keys() == source.keys()
    assert all(torch.equal(seen[k], source[k]) for k in source)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in source.values())


def _single_tensor(path: Path) -> bool:
    with safe_open(path, "pt") as fh:
        return len(list(fh.keys())) == 1


def test_tokenizer_and_generation_files_are_copied(tiny_llama, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    for p in tiny_llama.iterdir():
        (base / p.name).write_bytes(p.read_bytes())
    add_byte_level_tokenizer(base)  # a tokenizer.json the tokenizers library loads (a damaged one is refused)
    (base / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    (base / "chat_template.jinja").write_text("{{ messages }}")
    out = tmp_path / "out"
    assert run_cli("extend", base, "--method", "linear", "--factor", "2", "-o", out, "--no-verify", "-q") == 0
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes()


@pytest.mark.parametrize("method", ["linear", "yarn", "llama3", "dynamic", "ntk"])
@pytest.mark.parametrize("keep", ["legacy", "rope_parameters"])
def test_either_schema_alone_gives_the_same_rope(tiny_llama, tmp_path, method, keep):
    """transformers 4.x reads only rope_theta + rope_scaling; 5.x prefers rope_parameters. Each
    half of the written config, loaded alone by the installed transformers, must give the plan."""
    out = tmp_path / "out"
    assert run_cli("extend", tiny_llama, "--method", method, "--factor", "4", "-o", out, "--no-verify", "-q") == 0
    config = read_json(out / "config.json")
    if keep == "legacy":
        config.pop("rope_parameters")
    else:
        config.pop("rope_scaling")
        config.pop("rope_theta")
    (out / "config.json").write_text(json.dumps(config))
    hf = AutoConfig.from_pretrained(out)
    plan = RopePlan.from_json(read_json(out / "manifest.json")["plan"])
    rope_type = hf.rope_parameters["rope_type"]
    for seq_len in (ORIGINAL_CTX, 3 * ORIGINAL_CTX):
        if rope_type == "default":
            inv, att = ROPE_INIT_FUNCTIONS["linear"](_with(hf, {"rope_type": "linear", "factor": 1.0}), "cpu")
        else:
            inv, att = ROPE_INIT_FUNCTIONS[rope_type](hf, "cpu", seq_len=seq_len)
        torch.testing.assert_close(inv.double(), torch.tensor(inv_freq_at(plan, seq_len)), rtol=1e-6, atol=0)
        assert att == pytest.approx(plan.attention_factor, rel=1e-12)


def _with(config, rope: dict):
    config.rope_parameters = {**config.rope_parameters, **rope}
    return config


def test_phi3_legacy_rope_scaling_has_exactly_the_three_keys(tmp_path):
    base = make_tiny(tmp_path, "phi3")
    factors = tmp_path / "f.json"
    factors.write_text(json.dumps({"short_factor": [1.0] * 8, "long_factor": [2.0] * 8}))
    out = tmp_path / "out"
    assert run_cli("extend", base, "--method", "longrope", "--factors", factors, "--factor", "4", "-o", out,
                   "--tokens", "256", "-q") == 0
    config = read_json(out / "config.json")
    assert set(config["rope_scaling"]) == {"type", "short_factor", "long_factor"}
    assert config["original_max_position_embeddings"] == ORIGINAL_CTX
    assert config["max_position_embeddings"] == 4 * ORIGINAL_CTX
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def test_dry_run_writes_nothing(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("extend", tiny_llama, "--method", "yarn", "--factor", "4", "-o", out, "--dry-run", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plan"]["target_ctx"] == 4 * ORIGINAL_CTX and data["config"]["rope_scaling"]["rope_type"] == "yarn"
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_inspect_reports_the_checkpoint(tiny_llama, tmp_path, capsys):
    assert run_cli("inspect", tiny_llama, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "llama"
    assert info["original_ctx"] == info["declared_ctx"] == ORIGINAL_CTX
    assert info["scaling"] is None and info["position_scheme"]["rotary_dim"] == 16
    assert info["tensors"] == len(list(safe_open(tiny_llama / "model.safetensors", "pt").keys()))
    assert info["tensor_bytes"] == sum(
        t.numel() * t.element_size()
        for t in (safe_open(tiny_llama / "model.safetensors", "pt").get_tensor(k)
                  for k in safe_open(tiny_llama / "model.safetensors", "pt").keys())
    )
    out = tmp_path / "out"
    assert run_cli("extend", tiny_llama, "--method", "yarn", "--factor", "4", "-o", out, "--no-verify", "-q") == 0
    capsys.readouterr()
    assert run_cli("inspect", out) == 0
    text = capsys.readouterr().out
    assert "yarn ×4" in text and f"declared context {4 * ORIGINAL_CTX}" in text and "original context 64" in text


def test_manifest_hashes_match_files_written(tiny_llama, tmp_path):
    """Every format's files are hashed while they are written (not read back): each digest must equal an
    independent pass of hashlib over the file as it lies on disk, and every file must be listed."""
    base = add_byte_level_tokenizer(Path(shutil.copytree(tiny_llama, tmp_path / "base")))  # GGUF needs a vocabulary
    out = tmp_path / "out"
    assert run_cli("extend", base, "--method", "ntk", "--factor", "3", "--to", "safetensors,gguf,onnx", "-o", out,
                   "--max-shard-size", "200KB", "--no-verify", "-q") == 0  # shards and their index too
    manifest = read_json(out / "manifest.json")
    assert manifest["parity"] is None
    assert "not checked when this artifact was written" in (out / "README.md").read_text()
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert {"model.safetensors.index.json", "onnx/model.onnx"} <= on_disk
    assert len([n for n in on_disk if n.startswith("model-0")]) > 1
    assert any(n.endswith(".gguf") for n in on_disk)
    for name, record in manifest["files"].items():
        assert record["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest(), name
        assert record["bytes"] == (out / name).stat().st_size, name
