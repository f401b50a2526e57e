"""ropeconv finetune pose: the PoSE sampler, a tiny LoRA run on CPU, and its bad-input contract."""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ropeconv.finetune.pose import N_CHUNKS, gather, pose_sample
from tests.conftest import add_byte_level_tokenizer, assert_refused, listing, make_tiny, read_json, run_cli

N_CTX, T_CTX = 32, 128  # PoSE window and target; the tiny llama's original context is 64 → factor 2
STEPS = 12


# ----------------------------------------------------------------------------- the sampler


def _check_sample(ranges, positions, lx, n, big):
    assert len(ranges) == N_CHUNKS
    lengths = [end - start for start, end in ranges]
    assert sum(lengths) == n and all(length >= 1 for length in lengths)
    rt1 = lengths[0]
    assert 1 <= rt1 <= (n + 1) // 2
    assert ranges[0][0] == 0  # chunk 1 is the document's head (v_1 = 0)
    assert ranges[0][1] <= ranges[1][0] and ranges[1][1] <= lx  # in the document, no overlap
    assert len(positions) == n
    assert positions[:rt1] == list(range(rt1))  # first chunk starts at position 0, contiguous
    assert all(b > a for a, b in zip(positions, positions[1:]))  # strictly increasing
    skip = positions[rt1] - rt1
    assert 0 <= skip <= big - n
    assert positions[rt1:] == list(range(skip + rt1, skip + n))  # second chunk contiguous after the skip
    assert positions[-1] <= big - 1


@pytest.mark.parametrize("lx, n, big", [(160, 32, 128), (32, 32, 128), (100, 8, 9), (1000, 33, 4096), (9, 9, 10)])
def test_sample_invariants(lx, n, big):
    rng = random.Random(1234)
    for _ in range(500):
        ranges, positions = pose_sample(rng, lx, n, big)
        _check_sample(ranges, positions, lx, n, big)
        doc = list(range(1000, 1000 + lx))
        content = gather(doc, ranges)
        assert len(content) == n and content[0] == 1000  # the head token (BOS) always leads


def test_sample_coverage_of_relative_distances():
    """Over many samples every relative distance in [0, N) occurs, up to N − 1 itself."""
    rng = random.Random(0)
    seen = np.zeros(T_CTX, dtype=np.int64)
    largest = []
    for _ in range(3000):
        _, positions = pose_sample(rng, 5 * N_CTX, N_CTX, T_CTX)
        p = np.asarray(positions)
        d = (p[:, None] - p[None, :])[np.tril_indices(len(p))]  # causal pairs: query ≥ key
        seen += np.bincount(d, minlength=T_CTX)
        largest.append(int(p[-1] - p[0]))
    assert max(largest) == T_CTX - 1
    assert (seen > 0).all(), f"distances never seen: {np.flatnonzero(seen == 0).tolist()}"
    buckets = seen.reshape(16, -1).sum(axis=1)  # coarse histogram: far distances are not starved
    assert buckets.min() > 0
    assert buckets[-1] > 0.001 * buckets.sum()
    # skips are uniform on [0, N − n]: the largest distance is about uniform on [n − 1, N − 1]
    assert abs(np.mean(largest) - (N_CTX - 1 + T_CTX - 1) / 2) < 3


def test_sample_deterministic_by_seed():
    def draw(seed):
        rng = random.Random(seed)
        return [pose_sample(rng, 200, N_CTX, T_CTX) for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_sample_refuses_impossible_arguments():
    rng = random.Random(0)
    with pytest.raises(ValueError):
        pose_sample(rng, 31, 32, 128)  # document shorter than the window
    with pytest.raises(ValueError):
        pose_sample(rng, 64, 32, 16)  # target below the window


# ----------------------------------------------------------------------------- training on a tiny llama


def _write_text(path: Path, sentences: int = 120) -> Path:
    rng = random.Random(0)
    words = ("the quick brown fox jumps over a lazy dog while rotary positions interpolate and yarn scales "
             "every long context window").split()
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + "."
                              for _ in range(sentences)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return add_byte_level_tokenizer(make_tiny(tmp_path_factory.mktemp("pose"), "llama"))


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    return _write_text(tmp_path_factory.mktemp("text") / "corpus.txt")


@pytest.fixture(scope="module")
def trained(base, text, tmp_path_factory):
    """One CLI run (capsys is function-scoped, so stdout/stderr are captured by hand)."""
    out = tmp_path_factory.mktemp("adapters") / "pose-lora"
    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = run_cli("finetune", "pose", base, "--train-ctx", N_CTX, "--target-ctx", T_CTX, "--method", "yarn",
                     "--text", text, "--steps", STEPS, "--batch", 2, "--lr", 3e-3, "--seed", 0, "--device", "cpu",
                     "--json", "-o", out)
    seconds = time.monotonic() - start
    assert rc == 0, stderr.getvalue()
    result = json.loads(stdout.getvalue())
    print(f"tiny PoSE run: {seconds:.1f} s, losses {[round(x, 3) for x in result['losses']]}")
    return out, result, stderr.getvalue()


def test_adapter_files(trained):
    out, result, _ = trained
    names = listing(out)
    for name in ("adapter_config.json", "adapter_model.safetensors", "ropeconv_rope.json"):
        assert name in names
    assert listing(out.parent) == [out.name], "staging leftovers"
    config = read_json(out / "adapter_config.json")
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert result["files"] == names


def test_rope_record_matches_extend(trained, base, tmp_path, capsys):
    """The sidecar carries the plan `extend --method yarn --target-ctx N` builds, plus the PoSE window."""
    out, result, _ = trained
    record = read_json(out / "ropeconv_rope.json")
    capsys.readouterr()
    assert run_cli("extend", base, "--method", "yarn", "--target-ctx", T_CTX, "--dry-run", "--json",
                   "-o", tmp_path / "x") == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert record == {
        "method": "yarn",
        "original_ctx": 64,
        "target_ctx": T_CTX,
        "factor": plan["factor"],
        "params": plan["params"],
        "train_ctx": N_CTX,
        "base": str(base.resolve()),
    }
    assert record["factor"] == T_CTX / 64
    assert result["rope"] == record


def test_training_happened(trained, base):
    """Finite losses, progress on stderr, and peft loads the adapter onto the base with every B moved off zero."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out, result, stderr = trained
    losses = result["losses"]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    assert result["device"] == "cpu"
    assert f"step {STEPS}/{STEPS}: loss" in stderr and "Traceback" not in stderr

    saved = load_file(out / "adapter_model.safetensors")
    b_names = [k for k in saved if "lora_B" in k]
    assert len(b_names) == 2 * 4  # 2 layers × q,k,v,o
    assert all(saved[k].abs().max() > 0 for k in b_names), "a LoRA B matrix is still zero: no training"

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), out)
    loaded = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert len(loaded) == len(b_names)
    for name, value in loaded.items():
        key = name.replace(".default", "")
        assert torch.equal(value, saved[key]), name


def test_chunks_attend_across_the_skip(base):
    """With PoSE position ids, tokens of chunk 2 see chunk 1 (transformers must not read the jump as a new packed
    sequence), and the plan's rotary is what computes the angles."""
    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.finetune.train import forward_loss, load_model
    from ropeconv.methods import get
    from ropeconv.methods.base import ExtendRequest
    from ropeconv.parity.reference import PlanRotaryEmbedding

    plan = get("yarn").plan(load_checkpoint(base).scheme, ExtendRequest(target_ctx=T_CTX))
    model = load_model(base, plan, torch.device("cpu"), torch.float32).eval()
    assert any(isinstance(m, PlanRotaryEmbedding) for m in model.modules())
    ids = torch.randint(3, 300, (1, N_CTX), generator=torch.Generator().manual_seed(0))
    rt1 = 8
    pos = torch.tensor([list(range(rt1)) + list(range(90 + rt1, 90 + N_CTX))])
    with torch.no_grad():
        base_loss = forward_loss(model, ids, pos)
        changed = ids.clone()
        changed[0, 1] = (changed[0, 1] + 7) % 300 + 3  # a chunk-1 token the last loss terms can only see by attention
        logits = model(input_ids=ids, position_ids=pos, attention_mask=torch.ones_like(ids)).logits
        logits2 = model(input_ids=changed, position_ids=pos, attention_mask=torch.ones_like(ids)).logits
        contiguous = forward_loss(model, ids, torch.arange(N_CTX)[None])
    assert (logits[0, -1] - logits2[0, -1]).abs().max() > 1e-4  # the far chunk attends to chunk 1
    assert abs(float(base_loss) - float(contiguous)) > 1e-6  # the position ids reach the rotary


# ----------------------------------------------------------------------------- bad input: exit 2, nothing written


@pytest.fixture
def outdir(tmp_path) -> Path:
    parent = tmp_path / "outputs"
    parent.mkdir()
    return parent / "adapter"


def _pose(base, text, out, *extra, n=N_CTX, big=T_CTX, method="yarn"):
    return run_cli("finetune", "pose", base, "--train-ctx", n, "--target-ctx", big, "--method", method,
                   "--text", text, "--steps", 1, "--device", "cpu", "-q", "-o", out, *extra)


@pytest.mark.parametrize("case, args, kwargs, mentions", [
    ("missing text", ("--text-missing",), {}, ("not found",)),
    ("window = target", (), {"n": T_CTX}, ("--train-ctx",)),
    ("window > target", (), {"n": 256}, ("--train-ctx",)),
    ("window < 8", (), {"n": 4}, ("--train-ctx", "8")),
    ("target within the original", (), {"n": 16, "big": 64}, ("--target-ctx",)),
    ("unknown method", (), {"method": "bogus"}, ("method",)),
    ("alibi on a rope base", (), {"method": "alibi"}, ("alibi", "rope")),
    ("option of another method", ("--low-freq-factor", "2"), {}, ("--low-freq-factor",)),
    ("unknown target module", ("--target-modules", "q_proj,nope"), {}, ("nope",)),
    ("zero steps", ("--steps", "0"), {}, ("--max-steps",)),
    ("zero rank", ("--rank", "0"), {}, ("--rank",)),
    ("negative lr", ("--lr", "-1"), {}, ("--lr",)),
])
def test_refused(base, text, outdir, capsys, case, args, kwargs, mentions):
    if args == ("--text-missing",):
        text, args = text.parent / "absent.txt", ()
    before = listing(outdir.parent)
    capsys.readouterr()
    rc = _pose(base, text, outdir, *args, **kwargs)
    assert_refused(capsys, rc, outdir, before, mentions=mentions)


def test_refused_empty_short_and_binary_text(base, tmp_path, outdir, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    short = tmp_path / "short.txt"
    short.write_text("a fox.", encoding="utf-8")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    for path, words in ((empty, ("empty",)), (short, ("tokens", "--train-ctx")), (binary, ("UTF-8",))):
        before = listing(outdir.parent)
        capsys.readouterr()
        assert_refused(capsys, _pose(base, path, outdir), outdir, before, mentions=words)


def test_refused_existing_output(base, text, outdir, capsys):
    outdir.mkdir()
    (outdir / "keep.txt").write_text("mine")
    before = listing(outdir.parent)
    capsys.readouterr()
    assert_refused(capsys, _pose(base, text, outdir), outdir, before, mentions=("--force",))
    assert listing(outdir) == ["keep.txt"]


def test_refused_base_without_tokenizer(tmp_path, text, outdir, capsys):
    bare = make_tiny(tmp_path, "llama", name="bare")
    before = listing(outdir.parent)
    capsys.readouterr()
    assert_refused(capsys, _pose(bare, text, outdir), outdir, before, mentions=("tokenizer",))


def test_refused_without_peft(base, text, outdir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    before = listing(outdir.parent)
    capsys.readouterr()
    assert_refused(capsys, _pose(base, text, outdir), outdir, before, mentions=("pip install", "ropeconv[finetune]"))


def test_help_has_examples(capsys):
    assert run_cli("finetune", "pose", "--help") == 0
    help_text = capsys.readouterr().out
    assert "Examples:" in help_text and "--train-ctx" in help_text and "extend" in help_text


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["user folder", "user file"])
def test_a_checkpoint_dir_that_is_not_ropeconvs_is_refused_even_with_force(base, text, outdir, tmp_path, capsys,
                                                                           where):
    """Before: --checkpoint-dir naming a user's folder, with --force, had the run delete that folder (it removes its
    checkpoint folder once the adapter is out, and a previous run's with --force before it starts)."""
    mine = tmp_path / "mine"
    if where == "user folder":
        (mine / "sub").mkdir(parents=True)
        (mine / "notes.txt").write_text("keep")
        (mine / "sub" / "data.bin").write_bytes(b"\x00\x01")
    else:
        mine.write_text("keep")
    before_files = _tree(mine) if mine.is_dir() else {"": mine.read_bytes()}
    before = listing(outdir.parent)
    capsys.readouterr()
    rc = _pose(base, text, outdir, "--checkpoint-dir", mine, "--force")
    assert_refused(capsys, rc, outdir, before, mentions=("--checkpoint-dir",))
    assert (_tree(mine) if mine.is_dir() else {"": mine.read_bytes()}) == before_files


@pytest.mark.parametrize("target", ["inside the base", "checkpoints in the base"])
def test_outputs_over_the_inputs_are_refused(base, text, outdir, capsys, target):
    """-o or the checkpoint folder may not lie inside the base (before: the run wrote into it); -o over --text is
    refused as any file where a folder goes."""
    base_before, text_before = _tree(base), text.read_bytes()
    out = {"inside the base": base / "adapter", "checkpoints in the base": outdir}[target]
    extra = ("--checkpoint-dir", base / "ckpt") if target == "checkpoints in the base" else ()
    capsys.readouterr()
    rc = _pose(base, text, out, *extra, "--force")
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "base" in err or "--text" in err, err
    assert _tree(base) == base_before and text.read_bytes() == text_before
