"""LoRA merge: peft's merge_and_unload is the oracle for the merged tensors; the merged and extended model
passes verify in each runtime (and fails when the merge is left out); bad adapters are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import peft  # noqa: F401  (the oracle; a test dependency, never skipped)
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import add_byte_level_tokenizer, assert_refused, listing, make_tiny, read_json, run_cli

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base: Path, out: Path, *, seed: int = 0, **config) -> Path:
    """A PEFT adapter with random (non-zero) A and B, saved as peft saves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    options = dict(r=4, lora_alpha=8, target_modules=ALL_LINEAR, init_lora_weights=False)
    options.update(config)
    peft_model = get_peft_model(model, LoraConfig(**options))
    with torch.no_grad():  # saved whole modules get trained values too
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.1)
    peft_model.save_pretrained(out)
    return out


def peft_merged(base: Path, adapters: list[Path]) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapters[0], adapter_name="a0")
    for i, path in enumerate(adapters[1:], 1):
        model.load_adapter(path, adapter_name=f"a{i}")
    merged = model.merge_and_unload(adapter_names=[f"a{i}" for i in range(len(adapters))])
    return {k: v.detach() for k, v in merged.state_dict().items()}


def merged_by_ropeconv(base: Path, adapters: list[Path], tmp: Path, *extra: str) -> dict[str, torch.Tensor]:
    out = tmp / "merged"
    args = [a for p in adapters for a in ("--lora", p)]
    assert run_cli("extend", base, *args, "--force-method", "--method", "none", "--no-verify", "-q", "-o", out,
                   *extra) == 0
    return load_file(out / "model.safetensors")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return add_byte_level_tokenizer(make_tiny(tmp_path_factory.mktemp("lora-base"), "llama"))


def assert_same(ours: dict, theirs: dict, atol: float = 1e-6) -> None:
    changed = 0
    for name, tensor in ours.items():
        expected = theirs[name]
        assert tensor.shape == expected.shape, name
        torch.testing.assert_close(tensor, expected, rtol=0, atol=atol, msg=name)
        changed += not torch.equal(tensor, expected)
    assert set(theirs) <= set(ours) | {"lm_head.weight"}


@pytest.mark.parametrize("config", [
    dict(),
    dict(use_rslora=True, r=8, lora_alpha=4),
    dict(rank_pattern={"q_proj": 2}, alpha_pattern={"down_proj": 32}),
    dict(target_modules=["q_proj", "v_proj", "embed_tokens"], modules_to_save=["lm_head"]),
], ids=["plain", "rslora", "patterns", "embedding+modules_to_save"])
def test_merge_equals_peft(llama, tmp_path, config):
    adapter = make_adapter(llama, tmp_path / "a", **config)
    ours = merged_by_ropeconv(llama, [adapter], tmp_path)
    theirs = peft_merged(llama, [adapter])
    base = load_file(llama / "model.safetensors")
    assert_same(ours, theirs)
    moved = [n for n in ours if not torch.equal(ours[n], base[n])]
    assert moved, "nothing merged"  # the check can fail: the adapter changed weights


def test_several_adapters_equal_peft(llama, tmp_path):
    a = make_adapter(llama, tmp_path / "a", seed=1)
    b = make_adapter(llama, tmp_path / "b", seed=2, target_modules=["q_proj", "up_proj"], r=2, use_rslora=True)
    ours = merged_by_ropeconv(llama, [a, b], tmp_path)
    assert_same(ours, peft_merged(llama, [a, b]))
    (tmp_path / "x").mkdir()
    only_a = merged_by_ropeconv(llama, [a], tmp_path / "x")
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.weight"],
                           only_a["model.layers.0.self_attn.q_proj.weight"])


def test_fan_in_fan_out_equals_peft(tmp_path):
    """GPT-2's Conv1D stores weights [in, out]; peft's adapters for it set fan_in_fan_out."""
    base = make_tiny(tmp_path, "gpt2")
    adapter = make_adapter(base, tmp_path / "a", target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    assert read_json(adapter / "adapter_config.json")["fan_in_fan_out"] is True
    ours = merged_by_ropeconv(base, [adapter], tmp_path)
    assert_same(ours, peft_merged(base, [adapter]))


def test_bf16_base_rounds_once(tmp_path):
    """W' = bf16(W + s·B·A) computed in float32: within half a bf16 ulp of the float64 result."""
    base = make_tiny(tmp_path, "llama", name="bf16")
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(base / "model.safetensors").items()}
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    adapter = make_adapter(base, tmp_path / "a", target_modules=["q_proj"])
    ours = merged_by_ropeconv(base, [adapter], tmp_path)
    factors = load_file(adapter / "adapter_model.safetensors")
    name = "model.layers.1.self_attn.q_proj"
    a, b = factors[f"base_model.model.{name}.lora_A.weight"], factors[f"base_model.model.{name}.lora_B.weight"]
    exact = tensors[f"{name}.weight"].double() + 2.0 * (b.double() @ a.double())
    got = ours[f"{name}.weight"]
    assert got.dtype == torch.bfloat16
    # bfloat16 keeps 8 significant bits: half an ulp is at most |x|·2^-8; a second rounding (to bf16 delta,
    # then the sum) would exceed it
    assert torch.all((got.double() - exact).abs() <= exact.abs() * 2.0**-8)


def test_merged_extended_model_passes_every_runtime(llama, tmp_path, capsys):
    adapter = make_adapter(llama, tmp_path / "a")
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli("extend", llama, "--lora", adapter, "--lora-trained-with", "yarn:4", "--method", "yarn",
                   "--factor", "4", "--to", "safetensors,gguf,onnx", "--outtype", "f32", "-o", out, "-q",
                   "--json") == 0
    reports = json.loads(capsys.readouterr().out)["reports"]
    assert [r["runtime"] for r in reports] == ["transformers", "llama.cpp", "onnxruntime"]
    assert all(r["passed"] and r["max_abs_logit"] < 1e-3 for r in reports), reports
    manifest = read_json(out / "manifest.json")
    assert manifest["lora"][0]["path"] == str(adapter.resolve()) and len(manifest["lora"][0]["sha256"]) == 64
    assert run_cli("verify", out, "-q") == 0
    assert run_cli("verify", out / "onnx" / "model.onnx", "-q") == 0
    # sensitivity: the unmerged base weights in the output no longer match base + adapter
    shutil.copyfile(llama / "model.safetensors", out / "model.safetensors")
    assert run_cli("verify", out, "-q") == 1


# --------------------------------------------------------------------------------------- refusals

def _refused(capsys, tmp_path, base, *args, mentions=()):
    out = tmp_path / "refused"
    before = listing(tmp_path)
    rc = run_cli("extend", base, *args, "--method", "yarn", "--factor", "4", "-o", out, "-q")
    return assert_refused(capsys, rc, out, before, mentions=mentions)


def _edited(adapter: Path, dst: Path, config=None, drop: str | None = None) -> Path:
    shutil.copytree(adapter, dst)
    if config:
        data = read_json(dst / "adapter_config.json")
        data.update(config)
        (dst / "adapter_config.json").write_text(json.dumps(data))
    if drop:
        tensors = load_file(dst / "adapter_model.safetensors")
        del tensors[drop]
        save_file(tensors, dst / "adapter_model.safetensors")
    return dst


@pytest.fixture(scope="module")
def adapter(llama, tmp_path_factory) -> Path:
    return make_adapter(llama, tmp_path_factory.mktemp("adapter") / "a")


def test_rank_mismatch(capsys, tmp_path, llama, adapter):
    bad = _edited(adapter, tmp_path / "bad", config={"r": 8})
    _refused(capsys, tmp_path, llama, "--lora", bad, "--force-method", mentions=("rank",))


def test_missing_tensor(capsys, tmp_path, llama, adapter):
    bad = _edited(adapter, tmp_path / "bad", drop="base_model.model.model.layers.1.mlp.up_proj.lora_B.weight")
    _refused(capsys, tmp_path, llama, "--lora", bad, "--force-method", mentions=("missing",))


def test_adapter_for_another_base(capsys, tmp_path, llama):
    other = make_tiny(tmp_path, "llama", name="wider", hidden_size=96, intermediate_size=160)
    bad = make_adapter(other, tmp_path / "other-adapter")
    _refused(capsys, tmp_path, llama, "--lora", bad, "--force-method", mentions=("another model",))


def test_scaling_mismatch_and_unknown(capsys, tmp_path, llama, adapter):
    _refused(capsys, tmp_path, llama, "--lora", adapter, "--lora-trained-with", "linear:4", mentions=("linear",))
    _refused(capsys, tmp_path, llama, "--lora", adapter, "--lora-trained-with", "yarn:8", mentions=("factor 8",))
    _refused(capsys, tmp_path, llama, "--lora", adapter, mentions=("--lora-trained-with",))
    recorded = _edited(adapter, tmp_path / "rec")
    (recorded / "ropeconv_rope.json").write_text(json.dumps({"method": "ntk", "factor": 4.0}))
    _refused(capsys, tmp_path, llama, "--lora", recorded, mentions=("ntk", "ropeconv_rope.json"))


def test_other_adapter_kinds(capsys, tmp_path, llama, adapter):
    _refused(capsys, tmp_path, llama, "--lora", _edited(adapter, tmp_path / "dora", config={"use_dora": True}),
             "--force-method", mentions=("dora",))
    _refused(capsys, tmp_path, llama, "--lora", _edited(adapter, tmp_path / "ia3", config={"peft_type": "IA3"}),
             "--force-method", mentions=("IA3",))
    _refused(capsys, tmp_path, llama, "--lora", tmp_path / "nowhere", "--force-method", mentions=("adapter",))


def test_lora_options_need_lora(capsys, tmp_path, llama):
    _refused(capsys, tmp_path, llama, "--force-method", mentions=("--lora",))


# ------------------------------------------------------------------------------------- a GGUF base

def _gguf_base(llama: Path, tmp: Path, outtype: str) -> Path:
    assert run_cli("extend", llama, "--method", "none", "--to", "gguf", "--outtype", outtype, "--no-verify", "-q",
                   "-o", tmp / f"g-{outtype}") == 0
    path = tmp / f"base-{outtype}.gguf"
    shutil.copyfile(next((tmp / f"g-{outtype}").glob("*.gguf")), path)
    return path


def test_gguf_base_float_tensors_merged(llama, adapter, tmp_path, capsys):
    """Merged into an F32 GGUF (q/k rows un-permuted, merged, permuted back), proven in llama.cpp; the same
    file checked without the merge fails."""
    from ropeconv.gguf_io.reader import read_gguf
    from ropeconv.gguf_io.writer import rewrite_gguf
    from ropeconv.provenance import LORA_KEY

    base = _gguf_base(llama, tmp_path, "f32")
    out = tmp_path / "out.gguf"
    capsys.readouterr()
    assert run_cli("extend", base, "--lora", adapter, "--lora-trained-with", "yarn:4", "--method", "yarn",
                   "--factor", "4", "-o", out, "-q", "--json") == 0
    report = json.loads(capsys.readouterr().out)["parity"]
    assert report["passed"] and report["max_abs_logit"] < 1e-3, report
    assert run_cli("verify", out, "-q") == 0
    unmerged = tmp_path / "unmerged.gguf"
    rewrite_gguf(read_gguf(out), unmerged, drop_keys={LORA_KEY})  # the verifier no longer knows of the adapter
    assert run_cli("verify", unmerged, "--base", base, "-q") == 1


def test_gguf_base_quantized_refused(capsys, tmp_path, llama, adapter):
    base = _gguf_base(llama, tmp_path, "q8_0")
    out = tmp_path / "out.gguf"
    before = listing(tmp_path)
    rc = run_cli("extend", base, "--lora", adapter, "--force-method", "--method", "yarn", "--factor", "4", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=("Q8_0", "unquantized"))


def test_chain_finetune_merge_extend_verify(llama, tmp_path, capsys):
    """ropeconv finetune pose → extend --lora (scaling read from the adapter's record) → verify."""
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"the {w} sat on the mat number {i}." for i, w in
                             enumerate(["cat", "dog", "bird", "fox"] * 200)))
    adapter = tmp_path / "pose"
    assert run_cli("finetune", "pose", llama, "--train-ctx", "32", "--target-ctx", "256", "--method", "yarn",
                   "--text", text, "--steps", "4", "-o", adapter, "-q") == 0
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli("extend", llama, "--lora", adapter, "--method", "yarn", "--target-ctx", "256",
                   "--to", "safetensors,onnx", "-o", out, "-q", "--json") == 0
    reports = json.loads(capsys.readouterr().out)["reports"]
    assert len(reports) == 2 and all(r["passed"] for r in reports), reports
    assert run_cli("verify", out, "-q") == 0
    # the adapter records yarn ×4: another factor is refused
    before = listing(tmp_path)
    rc = run_cli("extend", llama, "--lora", adapter, "--method", "yarn", "--factor", "2", "-o", tmp_path / "x")
    assert_refused(capsys, rc, tmp_path / "x", before, mentions=("factor 4",))


def test_verify_when_the_adapter_moved(llama, tmp_path, capsys):
    adapter = make_adapter(llama, tmp_path / "a", seed=3)
    out = tmp_path / "out"
    assert run_cli("extend", llama, "--lora", adapter, "--lora-trained-with", "linear:2", "--method", "linear",
                   "--factor", "2", "--to", "safetensors,onnx", "-o", out, "-q") == 0
    card = (out / "README.md").read_text()
    assert "## LoRA merged" in card and str(adapter.resolve()) in card
    adapter.rename(tmp_path / "moved")
    capsys.readouterr()
    assert run_cli("verify", out) == 0  # the output's own merged safetensors stand in
    shown = capsys.readouterr()
    assert "LoRA adapter (moved or changed) not found" in shown.out + shown.err
    before = listing(tmp_path)
    rc = run_cli("verify", out, "--base", llama)
    assert_refused(capsys, rc, tmp_path / "nothing", before, mentions=("missing or changed",))
