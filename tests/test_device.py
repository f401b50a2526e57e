"""Device selection: CUDA when present (exact fp32: TF32 off), CPU otherwise, a clear error when
CUDA is asked for and absent."""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli
from ropeconv.errors import InputError
from ropeconv.parity import pick_device


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
