"""Device selection: CUDA when present (exact fp32: TF32 off), CPU otherwise, a clear error when
CUDA is asked for and absent."""

from __future__ import annotations

import pytest
import torch

from ropeconv.errors import InputError
from ropeconv.parity import pick_device
from tests.conftest import run_cli


def test_auto_picks_cuda_when_present_and_turns_tf32_off(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        assert pick_device("auto").type == "cuda"
        assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def test_auto_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None).type == "cpu" and pick_device("auto").type == "cpu"


def test_cuda_requested_without_cuda_is_bad_input(monkeypatch, tiny_llama, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError):
        pick_device("cuda")
    out = tmp_path / "out"
    assert run_cli("extend", tiny_llama, "--method", "yarn", "--factor", "4", "-o", out, "--device", "cuda") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]
    assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_parity_on_cuda(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("extend", tiny_llama, "--method", "yarn", "--factor", "4", "-o", out, "--device", "cuda",
                   "--tokens", "256", "-q") == 0
    import json

    assert json.loads((out / "manifest.json").read_text())["parity"]["safetensors"]["device"] == "cuda"


def test_onnx_runs_on_the_cpu_provider_always_and_cuda_too_on_a_gpu(monkeypatch):
    import onnxruntime

    from ropeconv.parity.runtimes import ort

    assert ort.providers(torch.device("cpu")) == ["cpu"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert ort.providers(torch.device("cuda")) == ["cpu", "cuda"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(InputError, match=r"ropeconv\[gpu\]"):
        ort.providers(torch.device("cuda"))


def _ort_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(not torch.cuda.is_available() or not _ort_cuda(),
                    reason="needs a CUDA device and onnxruntime-gpu's CUDA provider")
def test_onnx_parity_on_cuda(tiny_llama, tmp_path):
    out = tmp_path / "out"
    assert run_cli("extend", tiny_llama, "--method", "longrope", "--factor", "4", "-o", out, "--device", "cuda",
                   "--to", "onnx", "--tokens", "256", "-q", "--factors", _factors(tmp_path)) == 0
    import json

    parity = json.loads((out / "manifest.json").read_text())["parity"]["onnx"]
    assert parity["device"] == "cpu+cuda" and parity["passed"]


def _factors(tmp_path) -> str:
    import json

    path = tmp_path / "factors.json"
    path.write_text(json.dumps({"short_factor": [1.0 + 0.1 * i for i in range(8)],
                                "long_factor": [2.0 + 0.5 * i for i in range(8)]}))
    return str(path)
