"""Tiny random checkpoints built from configs in temp dirs (no downloads), and CLI helpers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ropeconv.cli.main import main
from ropeconv.families import FAMILIES
from ropeconv.families.spec import TINY_CTX
from ropeconv.parity import tf4

ORIGINAL_CTX = TINY_CTX  # the tiny models' training length (family files name it in their tiny configs)

# transformers 4.x (`make tf4`): found once here, then turned off for every other test, since each start of it costs
# seconds; the tests that run it take the tf4_python fixture (and set ROPECONV_TF4_PYTHON back where verify runs it)
TF4_PYTHON = tf4.python()
os.environ[tf4.ENV] = "off"

# transformers 5.2x draws progress bars on stderr when a test's own fixture code saves or loads a model
# (save_pretrained's "Writing model shards", from_pretrained's "Loading weights"), which the one-line stderr checks
# would read as ropeconv's output; ropeconv quiets them itself where it loads a model (parity._quiet_transformers).
from transformers.utils import logging as _hf_logging  # noqa: E402

_hf_logging.disable_progress_bar()

# Per-family tiny configs, each in its family file (Family.tiny, over make_tiny's defaults below).
# initializer_range is large so logits have unit scale and a wrong rope visibly moves them; token ids are kept
# inside the small vocabulary.
TINY = {name: dict(family.tiny) for name, family in FAMILIES.items()}

# families with norms of their own (q/k norms, post-norms), initialized away from transformers' ones
# (name → the range they are drawn from: Family.tiny_norm_range)
RANDOM_NORMS = {name: family.tiny_norm_range for name, family in FAMILIES.items() if family.tiny_norm_range}


def default_cells(cells, fmt: str) -> list[tuple[str, str]]:
    """The (family, method) cells of a generated matrix the default suite runs: a family with test_methods for the
    format (the mixtures of experts, whose tiny models are costly) runs those methods only; ROPECONV_ALL_CELLS=1 runs
    every claimed cell."""
    if os.environ.get("ROPECONV_ALL_CELLS") == "1":
        return list(cells)
    return [(f, m) for f, m in cells
            if FAMILIES[f].test_methods is None or fmt not in FAMILIES[f].test_methods
            or m in FAMILIES[f].test_methods[fmt]]


def make_tiny(root: Path, model_type: str = "llama", *, name: str | None = None, max_shard_size: str | None = None,
              **overrides) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(
        vocab_size=512,
        num_hidden_layers=2,
        max_position_embeddings=ORIGINAL_CTX,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    kwargs.update(TINY[model_type])
    kwargs.update(overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    if model_type in RANDOM_NORMS:  # so that a norm weight read from the wrong place shows in the logits
        with torch.no_grad():
            for weight_name, param in model.named_parameters():
                if weight_name.endswith("norm.weight"):
                    param.uniform_(*RANDOM_NORMS[model_type])
    out = root / (name or f"tiny-{model_type}")
    save_kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **save_kwargs)
    return out


INT4_LEVELS = tuple(range(-8, 8))
IQ4_NL_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)  # ggml's kvalues_iq4nl


def on_quant_grid(base: Path, levels=INT4_LEVELS, step: float = 63 * 2.0**-11, seed: int = 0) -> Path:
    """Rewrite every matrix of a tiny checkpoint so that each 32-wide block of a row takes values step × levels
    with the lowest and the highest level in it: a block quantizer of that grid (ORT's int4, llama.cpp's
    Q4_0/Q4_K/Q5_K/Q6_K for 16 uniform levels, IQ4_NL for its own) then finds the exact scale and the weights
    come back unchanged, so a quantized file of this base differs from its float32 twin by the runtime's
    activation rounding alone — the part a quantized gate is meant to tolerate; step is a power-of-two
    multiple of 63 so that llama.cpp's 6-bit sub-block scales are exact in float16."""
    import numpy as np
    from safetensors.torch import load_file, save_file

    rng = np.random.default_rng(seed)
    grid = np.asarray(levels, dtype=np.float64) * step
    tensors = load_file(base / "model.safetensors")
    for name, weight in tensors.items():
        if weight.dim() != 2:
            continue
        rows, cols = weight.shape
        index = rng.integers(0, len(grid), size=(rows, cols // 32, 32))
        where = rng.permuted(np.tile(np.arange(32), (rows, cols // 32, 1)), axis=-1)
        np.put_along_axis(index, where[..., :1], 0, axis=-1)
        np.put_along_axis(index, where[..., 1:2], len(grid) - 1, axis=-1)
        tensors[name] = torch.from_numpy(grid[index].reshape(rows, cols).astype("float32"))
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    return base


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def assert_refused(capsys, rc: int, out: Path, parent_before: list[str], *, mentions: tuple[str, ...] = ()) -> str:
    """The bad-input contract; returns the one error line."""
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2, f"exit {rc}, expected 2; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{err}"
    assert len(err.splitlines()) == 1, f"blank lines on stderr:\n{err!r}"
    line = lines[0]
    print("REFUSED:", line)
    assert line.startswith("ropeconv: error: "), line
    assert len(line) > len("ropeconv: error: ") + 5, line
    for word in mentions:
        assert word.lower() in line.lower(), f"{word!r} not mentioned in: {line}"
    assert not out.exists() or out.name in parent_before, f"{out} was created"
    after = listing(out.parent)
    assert after == parent_before, f"leftovers in {out.parent}: {sorted(set(after) - set(parent_before))}"
    return line


def gguf_tensor_digests(path: Path) -> dict[str, str]:
    """sha256 of each tensor's bytes in a GGUF, by name: what a retrofit must keep byte for byte."""
    import hashlib

    from ropeconv.gguf_io.reader import read_gguf

    src = read_gguf(path)
    with open(path, "rb") as fh:
        return {t.name: hashlib.sha256((fh.seek(t.offset), fh.read(t.nbytes))[1]).hexdigest() for t in src.tensors}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def temp_sockets() -> set[str]:
    """The sockets in the system temp folder (vLLM's engines make their IPC sockets there unless told otherwise)."""
    found = set()
    for entry in os.scandir(tempfile.gettempdir()):
        with contextlib.suppress(OSError):  # gone between the listing and the look
            if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                found.add(entry.name)
    return found


@pytest.fixture(scope="session")
def tf4_python() -> Path:
    """The transformers 4.x interpreter. `make test` builds it and sets ROPECONV_REQUIRE_TF4, so there a missing one
    fails; a developer running pytest by hand without it gets a skip that says how to get it."""
    if TF4_PYTHON is None:
        if os.environ.get("ROPECONV_REQUIRE_TF4"):
            pytest.fail("the transformers 4.x environment is missing (ROPECONV_REQUIRE_TF4 is set, as by `make test`); "
                        "`make tf4` builds .venv-tf4")
        pytest.skip("no transformers 4.x environment: `make tf4` builds .venv-tf4 (or set ROPECONV_TF4_PYTHON)")
    return TF4_PYTHON


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request) -> Iterator[Path]:
    """A folder for one module's shared models, removed when the module is done (pyproject's retention policy removes
    a passing test's tmp_path at once, but tmp_path_factory's folders only when the session ends)."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("base"), "llama")


@pytest.fixture(scope="session")
def tiny_yarn_gguf(tiny_llama, tmp_path_factory) -> Path:
    """A real ropeconv GGUF of the tiny llama (yarn ×2 plan, rope scaling keys, a byte-level vocabulary), ~300 KB;
    read only: tests that damage it write a copy."""
    root = tmp_path_factory.mktemp("tiny-yarn-gguf")
    base = add_byte_level_tokenizer(Path(shutil.copytree(tiny_llama, root / "base")))
    assert run_cli("extend", base, "--method", "yarn", "--factor", "2", "--to", "gguf", "--no-verify", "-q",
                   "-o", root / "out") == 0
    return next((root / "out").glob("*.gguf"))


@pytest.fixture
def base(tiny_llama, tmp_path) -> Path:
    """A private, editable copy of the session's tiny llama (a module may define its own `base` instead)."""
    return Path(shutil.copytree(tiny_llama, tmp_path / "base"))


@pytest.fixture
def out(tmp_path) -> Path:
    """An output path whose parent exists and holds nothing else: "nothing left beside the target" is checkable."""
    parent = tmp_path / "outputs"
    parent.mkdir()
    return parent / "extended"


def add_byte_level_tokenizer(model_dir: Path) -> Path:
    from ropeconv.fixtures.tokenizers import add_byte_level_bpe

    return add_byte_level_bpe(model_dir)
