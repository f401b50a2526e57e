"""The format registry (ropeconv.formats) agrees with the code it stands for."""

from __future__ import annotations

from pathlib import Path

import pytest

from ropeconv.formats import FORMATS, format_of, is_gguf
from ropeconv.parity.runtimes import runtime_for
from ropeconv.parity.runtimes.base import Runtime


# a folder format other than the checkpoint is claimed by what it holds: its own tests run runtime_for on a folder
# it wrote (tests/formats/test_mlx.py)
@pytest.mark.parametrize("name", [n for n, f in FORMATS.items() if f.suffix is not None or f.is_checkpoint])
def test_each_format_runs_in_the_runtime_it_names(name):
    """The runtime parity picks for the format's artifact follows the one runtime interface and reports itself under
    the registry's runtime name."""
    fmt = FORMATS[name]
    artifact = Path(f"out/model{fmt.suffix}") if fmt.suffix else Path("out")
    runtime = runtime_for(artifact)
    assert isinstance(runtime, Runtime)
    assert runtime.name == fmt.runtime


def test_a_file_is_known_by_its_suffix():
    assert format_of(Path("a.b/model-Q4_K_M.gguf")).name == "gguf"
    assert format_of(Path("out/onnx/model.onnx")).name == "onnx"
    assert format_of(Path("SmolLM2-135M")) is None and format_of(Path("model.gguf.part")) is None
    assert is_gguf(Path("x.gguf")) and not is_gguf(Path("x.onnx")) and not is_gguf(Path("gguf"))
