"""A GGUF base under a --max-memory that would need disk offload: transformers loads a GGUF's weights into memory
only (its GGUF loader refuses a device map with disk in it), so the reference that proves the retrofit cannot be
built that way — refused in one line before anything is written, not a RuntimeError traceback from parity."""

from __future__ import annotations

import pytest

from tests.conftest import assert_refused, listing, run_cli

pytest.importorskip("llama_cpp")


def test_a_gguf_base_that_would_need_disk_offload_is_refused_before_writing(tiny_yarn_gguf, tmp_path, capsys):
    from ropeconv.device.placement import blocks, skeleton

    model = skeleton(tiny_yarn_gguf.parent, tiny_yarn_gguf.name)
    sizes = [size for _, size in blocks(model)]
    cap = max(sizes) * 5 // 4  # room for the largest block (that refusal is another one), not for the whole model
    assert sum(sizes) > 2 * cap
    out = tmp_path / "out.gguf"
    before = listing(tmp_path)
    capsys.readouterr()
    rc = run_cli("extend", tiny_yarn_gguf, "--rebase", "--method", "yarn", "--factor", "4", "--device", "cpu",
                 "--max-memory", f"cpu={cap}B", "-o", out)
    line = assert_refused(capsys, rc, out, before, mentions=("GGUF", "disk", "--no-verify"))
    assert "largest block" not in line, line
    # without verification nothing needs the transformers reference: the same command writes the file
    assert run_cli("extend", tiny_yarn_gguf, "--rebase", "--method", "yarn", "--factor", "4", "--max-memory",
                   f"cpu={cap}B", "--no-verify", "-q", "-o", out) == 0
    assert out.is_file()
