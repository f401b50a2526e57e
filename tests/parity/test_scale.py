"""Parity at scale: models larger than the memory cap (accelerate's placement: CPU, then disk), the planner over
two GPUs, and the full-length probe prefilled in chunks through the KV cache.

The memory test runs `ropeconv verify` in a subprocess on a synthetic llama whose float32 weights are > 3× the
cap, and polls the process's anonymous resident memory (RssAnon in /proc/PID/status) every few milliseconds:
memory that is the process's own. File-backed pages (the safetensors files transformers and accelerate map and
read, which the kernel drops under pressure) are left out; ru_maxrss counts them, and transformers' loader
touches every tensor of a file once (+70 MiB here, gone after the load). The allowance is measured, not chosen:
the peak of the same verify on a one-layer model of the same shapes (interpreter, libraries, probe and one block
of weights), plus the cap, plus SLACK for allocator noise between runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import add_byte_level_tokenizer, assert_refused, listing, make_tiny, run_cli
from tests.export.test_memory import ropeconv_cmd

MiB = 1024 * 1024
# float32: 12.6 MiB per decoder layer, ~250 MiB for 20 layers; stored in bfloat16 (half that on disk)
SHAPES = dict(vocab_size=512, hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=4,
              max_position_embeddings=64, initializer_range=0.05, tie_word_embeddings=False)
BIG_LAYERS, CAP = 20, 32 * MiB
# allocator noise (glibc arenas, freed blocks kept) between runs: seen 9–27 MiB quiet, 63 MiB once on a machine at
# load 15; a run ignoring the cap would exceed the allowance by ~150 MiB more than that (asserted below)
SLACK = 64 * MiB
TIMEOUT_S = 240.0


def _llama(root: Path, name: str, layers: int) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", num_hidden_layers=layers, bos_token_id=1, eos_token_id=2, **SHAPES)
    torch.manual_seed(layers)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(root / name)
    return root / name


@pytest.fixture(scope="module")
def extended(module_tmp):
    """{small, big}: yarn ×4 outputs (written without parity) of a 1-layer and a BIG_LAYERS-layer model of one shape."""
    root = module_tmp / "scale"
    outs = {}
    for name, layers in (("small", 1), ("big", BIG_LAYERS)):
        base = _llama(root, f"base-{name}", layers)
        outs[name] = root / f"out-{name}"
        assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--no-verify", "-q", "-o", outs[name]) == 0
    return outs


def _verify_peak(out: Path, *extra: str) -> tuple[dict, int, float]:
    """`ropeconv verify OUT --json` in a subprocess: (report, peak anonymous RSS in bytes, seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen([*ropeconv_cmd(), "verify", str(out), "--json", "-q", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    peak, status = 0, Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            anon = next((line for line in status.read_text().splitlines() if line.startswith("RssAnon:")), None)
        except OSError:  # exited between poll() and the read
            break
        if anon:
            peak = max(peak, int(anon.split()[1]) * 1024)
        if time.monotonic() - start > TIMEOUT_S:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"verify ran past {TIMEOUT_S}s")
        time.sleep(0.005)
    stdout, stderr = proc.communicate()
    seconds = time.monotonic() - start
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{stderr.decode()}"
    return json.loads(stdout), peak, seconds


def _float32_bytes(out: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(out / "model.safetensors", framework="pt") as f:
        return sum(4 * math.prod(f.get_slice(name).get_shape()) for name in f.keys())


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc to poll a process's memory")
def test_verify_under_a_cpu_cap_stays_within_it_and_gives_the_uncapped_figures(extended, capsys):
    big = extended["big"]
    weights = _float32_bytes(big)
    assert weights >= 3 * CAP, "the model must be at least 3× the cap"
    _, constant, small_s = _verify_peak(extended["small"])
    capped, capped_peak, capped_s = _verify_peak(big, "--max-memory", f"cpu={CAP // MiB}MiB")
    allowed = constant + CAP + SLACK
    with capsys.disabled():
        print(f"\nfloat32 weights {weights / MiB:.0f} MiB, cap {CAP / MiB:.0f} MiB; peak anonymous RSS: one-layer model "
              f"{constant / MiB:.0f} MiB, capped {capped_peak / MiB:.0f} MiB (allowed {allowed / MiB:.0f}); "
              f"{capped_s:.0f} s")
    assert capped["passed"]
    assert any("on disk" in n for n in capped["notes"]), capped["notes"]  # the cap forced disk offload
    # a run that ignored the cap would hold all the float32 weights: constant + weights, far above the allowance
    assert weights > CAP + 3 * SLACK
    assert capped_peak <= allowed, f"peak {capped_peak / MiB:.0f} MiB over the cap's allowance {allowed / MiB:.0f}"
    # the same float32 math wherever the weights lived (uncapped in-process: same code, no import cost)
    capsys.readouterr()
    start = time.monotonic()
    assert run_cli("verify", big, "--json", "-q") == 0
    uncapped = json.loads(capsys.readouterr().out)
    with capsys.disabled():
        print(f"one-layer verify {small_s:.0f} s, capped {capped_s:.0f} s, uncapped in-process {time.monotonic() - start:.0f} s")
    assert uncapped["passed"] and len(capped["bands"]) == len(uncapped["bands"])
    for a, b in zip(capped["bands"], uncapped["bands"]):
        assert a["max_abs_logit"] == b["max_abs_logit"] and a["mean_kl"] == b["mean_kl"], (a, b)


def test_a_cap_smaller_than_one_layer_is_refused_in_one_line(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    before = listing(tmp_path)
    rc = run_cli("extend", tiny_llama, "--method", "yarn", "--factor", "4", "-o", out, "-q", "--max-memory", "cpu=16KiB")
    line = assert_refused(capsys, rc, out, before, mentions=("--max-memory", "model.layers.0", "at least"))
    assert "cpu" in line


@pytest.mark.parametrize("text", ["cpu", "gpu=1GB", "cpu=12GiB,cpu=1GB", "cpu=lots"])
def test_a_malformed_max_memory_is_refused(tiny_llama, tmp_path, capsys, text):
    out = tmp_path / "out"
    before = listing(tmp_path)
    rc = run_cli("extend", tiny_llama, "--method", "yarn", "--factor", "4", "-o", out, "-q", "--max-memory", text)
    assert_refused(capsys, rc, out, before, mentions=("--max-memory",))


def test_a_gpu_cap_on_a_cpu_run_is_refused(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    before = listing(tmp_path)
    rc = run_cli("extend", tiny_llama, "--method", "yarn", "--factor", "4", "-o", out, "-q", "--device", "cpu",
                 "--max-memory", "cuda:0=1GiB")
    assert_refused(capsys, rc, out, before, mentions=("cuda:0", "CPU"))


def _skeleton(layers: int = 8):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", num_hidden_layers=layers, **dict(SHAPES, hidden_size=256,
                                                                              intermediate_size=768))
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _layers_on(device_map: dict, device) -> list[int]:
    return [int(k.split(".")[2]) for k, d in device_map.items() if k.startswith("model.layers.") and d == device]


def test_the_planner_spreads_layers_over_two_gpus(monkeypatch):
    """accelerate's own planner, told of two GPUs (no GPU needed to plan): balanced, in layer order."""
    from ropeconv.device.placement import blocks, plan_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = _skeleton()
    layer = dict(blocks(model))["model.layers.0"]
    roomy = plan_devices(model, {0: 10**9, 1: 10**9, "cpu": 10**9, "disk": 10**12})
    first, second = _layers_on(roomy.device_map, 0), _layers_on(roomy.device_map, 1)
    assert first == [0, 1, 2, 3] and second == [4, 5, 6, 7], roomy.device_map
    assert set(roomy.device_map.values()) == {0, 1} and not roomy.offloaded

    # three layers' room per GPU: GPU 0 also keeps room to run offloaded layers, the rest go to the CPU
    tight = plan_devices(model, {0: 3 * layer, 1: 3 * layer, "cpu": 10**9, "disk": 10**12})
    on0, on1, on_cpu = (_layers_on(tight.device_map, d) for d in (0, 1, "cpu"))
    assert on0 and on1 and on_cpu and sorted(on0 + on1 + on_cpu) == list(range(8))
    assert max(on0) < min(on1) and max(on1) < min(on_cpu), tight.device_map
    assert tight.bytes_by_device[0] <= 3 * layer and tight.bytes_by_device[1] <= 3 * layer
    assert tight.offloaded and tight.execution == 0


def test_max_memory_gives_each_gpu_its_cap(monkeypatch):
    from ropeconv.device.placement import budget, parse_max_memory

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    placement = parse_max_memory("cuda:0=20GiB,1=10GB,cpu=12GiB,disk=1TB")
    assert budget(placement, torch.device("cuda")) == {0: 20 * 1024**3, 1: 10**10, "cpu": 12 * 1024**3,
                                                         "disk": 10**12}
    every = budget(parse_max_memory("cuda=8GiB,cpu=1GiB,disk=1GiB"), torch.device("cuda"))
    assert every == {0: 8 * 1024**3, 1: 8 * 1024**3, "cpu": 1024**3, "disk": 1024**3}
    from ropeconv.errors import InputError

    with pytest.raises(InputError, match="2 visible CUDA devices"):
        budget(parse_max_memory("cuda:2=1GiB"), torch.device("cuda"))


# ------------------------------------------------------------------------------------------ full length


@pytest.fixture(scope="module")
def yarn_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    base = add_byte_level_tokenizer(make_tiny(root, "llama"))  # llama.cpp needs the vocabulary in the GGUF
    out = root / "out"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--no-verify", "-q", "-o", out,
                   "--to", "safetensors,gguf,onnx") == 0
    return base, out


def test_chunked_prefill_equals_one_shot_from_position_0_to_4x(yarn_out, monkeypatch):
    """Reference (transformers with the plan) and onnxruntime, 256 tokens = 4× the original context: chunks of 48
    through the KV cache against one call; the logits are kept in a scratch file (as a long probe's are)."""
    from ropeconv.extend.from_hf import prepare
    from ropeconv.extend.job import ExtendJob
    from ropeconv.methods.base import ExtendRequest
    from ropeconv.parity import logit_rows
    from ropeconv.parity.probe import plan_passes, probe_ids
    from ropeconv.parity.reference import load_reference
    from ropeconv.parity.runtimes import hf, ort

    base, out = yarn_out
    plan = prepare(ExtendJob(base=base, method="yarn", request=ExtendRequest(factor=4), out=out)).plan
    n = plan.target_ctx
    assert n == 4 * plan.original_ctx
    ids = probe_ids(512, n)
    one = plan_passes(plan, n, chunk_tokens=0)[-1]
    chunked = plan_passes(plan, n, chunk_tokens=48)[-1]
    assert one.first_position == 0 and chunked.chunk_tokens == 48 and len(chunked.prefill_chunks()) > 5
    monkeypatch.setattr(logit_rows, "IN_MEMORY_BYTES", 0)
    allocate, kinds = logit_rows.allocate, []
    monkeypatch.setattr(logit_rows, "allocate", lambda *a: kinds.append(type(allocate(*a))) or allocate(*a))
    scratch = out.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    model = load_reference(base, plan, torch.device("cpu"))
    ref_one, ref_chunked = hf.pass_logits(model, ids, one), hf.pass_logits(model, ids, chunked, scratch)
    import numpy as np

    decoder = ort.Decoder(ort.session(out / "onnx" / "model.onnx"))
    ort_one = ort.decode(decoder, ids, one.position_ids(), one.decode_steps)
    ort_chunked = ort.decode(decoder, ids, chunked.position_ids(), chunked.decode_steps, 48, scratch)
    assert kinds == [np.ndarray, np.memmap] * 2, kinds  # rows in a scratch file when given one
    d_ref, d_ort = float((ref_one - ref_chunked).abs().max()), float((ort_one - ort_chunked).abs().max())
    print(f"\nchunked vs one-shot, max|Δlogit| over positions 0–{n - 1}: transformers {d_ref:.2e}, onnxruntime {d_ort:.2e}")
    assert d_ref <= 1e-5 and d_ort <= 1e-5
    assert float(ref_one.abs().max()) > 1.0  # logits of unit scale: the bound above is not vacuous


def test_full_length_verify_passes_in_every_runtime_and_fails_without_the_scaling(yarn_out, monkeypatch, capsys):
    from ropeconv.parity import probe

    base, out = yarn_out
    # chunks on this tiny probe as a 32k one gets them
    monkeypatch.setattr(probe, "LONG_PREFILL", 64)
    monkeypatch.setattr(probe, "PREFILL_CHUNK", 48)
    capsys.readouterr()
    assert run_cli("verify", out, "--full-length", "--json", "-q") == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r["runtime"] for r in reports] == ["transformers", "llama.cpp", "onnxruntime"]
    for r in reports:
        assert r["passed"] and r["first_position"] == 0 and r["last_position"] == 255, r
        assert any("chunks of 48" in n for n in r["notes"]) and any("full-length" in n for n in r["notes"])
        strict = [(b["first_position"], b["last_position"]) for b in r["bands"] if not b["quantized"]]
        assert strict == [(0, 63), (64, 127), (128, 255)]

    # the same output with its scaling stripped: the difference sits beyond the original context
    stripped = out.parent / "stripped"
    import shutil

    shutil.copytree(out, stripped, ignore=shutil.ignore_patterns("*.gguf", "onnx"))
    config = json.loads((stripped / "config.json").read_text())
    for key in ("rope_scaling", "rope_parameters"):
        config.pop(key, None)
    config["max_position_embeddings"] = 256
    (stripped / "config.json").write_text(json.dumps(config))
    manifest = json.loads((stripped / "manifest.json").read_text())
    manifest["formats"] = {"safetensors": manifest["formats"]["safetensors"]}
    (stripped / "manifest.json").write_text(json.dumps(manifest))
    assert run_cli("verify", stripped, "--full-length", "--json", "-q") == 1
    report = json.loads(capsys.readouterr().out)
    beyond = [b for b in report["bands"] if b["first_position"] >= 64]
    print(f"\nscaling stripped: max|Δlogit| per band {[round(b['max_abs_logit'], 3) for b in report['bands']]}")
    assert not report["passed"] and all(b["max_abs_logit"] > 1e-2 for b in beyond)


def test_tokens_and_full_length_together_are_refused(yarn_out, tmp_path, capsys):
    base, _ = yarn_out
    out = tmp_path / "o"
    before = listing(tmp_path)
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "-o", out, "-q", "--tokens", "64",
                 "--full-length")
    assert_refused(capsys, rc, out, before, mentions=("--tokens", "--full-length"))


# ------------------------------------------------------------------------------------------ CUDA (gpu-check)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check runs these)")


@pytest.fixture(scope="module")
def yarn_st(tmp_path_factory):
    """safetensors only: a GPU machine may lack llama.cpp and onnxruntime-gpu."""
    root = tmp_path_factory.mktemp("cuda")
    out = root / "out"
    assert run_cli("extend", make_tiny(root, "llama"), "--method", "yarn", "--factor", "4", "--no-verify", "-q",
                   "-o", out) == 0
    return out


@needs_cuda
def test_cuda_full_length_parity_with_layers_offloaded_to_the_cpu(yarn_st, capsys):
    """A GPU cap of about three layers: the rest run from the CPU through accelerate's hooks; the plan's rotary
    follows its inputs to the GPU. Same figures as a run held whole on the GPU, within float32 noise."""
    capsys.readouterr()
    assert run_cli("verify", yarn_st, "--device", "cuda", "--full-length", "--json", "-q", "--max-memory",
                   "cuda:0=300KiB,cpu=1GiB") == 0
    capped = json.loads(capsys.readouterr().out)
    assert run_cli("verify", yarn_st, "--device", "cuda", "--full-length", "--json", "-q") == 0
    whole = json.loads(capsys.readouterr().out)
    assert capped["device"] == "cuda" and capped["passed"] and whole["passed"]
    assert any("placed by accelerate" in n and "cpu" in n for n in capped["notes"]), capped["notes"]
    assert abs(capped["max_abs_logit"] - whole["max_abs_logit"]) < 1e-4


@needs_cuda
def test_cuda_default_probe_is_full_length(yarn_st, capsys):
    capsys.readouterr()
    assert run_cli("verify", yarn_st, "--device", "cuda", "--json", "-q") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["first_position"] == 0 and report["last_position"] == 255
