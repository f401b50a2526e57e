"""Shared by the finetune tests (no tests here): one torch thread, and a CLI run whose --json result is returned."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from tests.conftest import run_cli


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared CPU, two threads of these tiny ops spend their time waiting for each other.
    Imported by a test module, it applies to that module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli_json(*args) -> tuple[dict, str]:
    """`ropeconv ARGS` in this process, which must succeed: (its JSON on stdout, its stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = run_cli(*args)
    assert rc == 0, stderr.getvalue()
    return json.loads(stdout.getvalue()), stderr.getvalue()
