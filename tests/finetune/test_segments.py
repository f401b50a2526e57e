"""ropeconv finetune segments: the sampling rule (positions, lengths, counts, distances), the step-seeded global
batch, and tiny absolute-position models (GPT-2, OPT) trained on their interpolated tables."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ropeconv.finetune.batches import global_batch, process_slice
from ropeconv.finetune.pose import gather
from ropeconv.finetune.segments import segment_lengths, segments_sample
from tests.conftest import add_byte_level_tokenizer, make_tiny, read_json, run_cli
from tests.finetune.support import cli_json, one_thread  # noqa: F401 (an autouse fixture)

N_CTX, T_CTX = 32, 128


# ----------------------------------------------------------------------------- the rule


@pytest.mark.parametrize("lx, n, big, k", [(128, 32, 128, 4), (300, 32, 128, 4), (200, 30, 120, 7), (64, 9, 64, 1),
                                           (40, 16, 16, 4), (1000, 64, 512, 3)])
def test_positions_are_the_original_positions(lx, n, big, k):
    """The document's token i is the int 10_000 + i: every sample's ids, minus its window start, equal its
    position ids; lengths and count follow the rule; segments are in order, disjoint, inside one window."""
    doc = list(range(10_000, 10_000 + lx))
    rng = random.Random(5)
    for _ in range(300):
        ranges, positions = segments_sample(rng, lx, n, big, k)
        content = gather(doc, ranges)
        window = ranges[0][0]  # the first segment holds the window's head: position 0
        assert len(ranges) == k
        assert [end - start for start, end in ranges] == segment_lengths(n, k)
        assert len(content) == len(positions) == n
        assert [t - 10_000 - window for t in content] == positions  # the original positions, token by token
        assert positions[0] == 0 and positions[-1] <= big - 1
        assert all(b > a for a, b in zip(positions, positions[1:]))
        assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
        assert 0 <= window <= lx - big and ranges[-1][1] <= window + big


def test_segment_lengths_rule():
    assert segment_lengths(32, 4) == [8, 8, 8, 8]
    assert segment_lengths(30, 4) == [8, 8, 7, 7]
    assert segment_lengths(9, 1) == [9]
    assert all(sum(segment_lengths(n, k)) == n and max(segment_lengths(n, k)) - min(segment_lengths(n, k)) <= 1
               for n in range(8, 80) for k in range(1, 9))


def test_gaps_are_uniform_compositions():
    """With Lt − Lc = 3 left out in K = 3 segments, the (g1, g2, tail) triples are the C(5, 2) = 10 compositions of 3,
    each about equally often."""
    rng = random.Random(0)
    seen = Counter()
    lengths = segment_lengths(9, 3)
    for _ in range(5000):
        ranges, _ = segments_sample(rng, 12, 9, 12, 3)
        starts = [start for start, _ in ranges]
        g1, g2 = starts[1] - lengths[0], starts[2] - starts[1] - lengths[1]
        seen[(g1, g2, 3 - g1 - g2)] += 1
    assert len(seen) == 10 and all(min(g) >= 0 for g in seen)
    assert max(seen.values()) / min(seen.values()) < 1.35


def test_distances_up_to_the_target_occur():
    rng = random.Random(1)
    seen = np.zeros(T_CTX, dtype=np.int64)
    for _ in range(1500):
        _, positions = segments_sample(rng, 3 * T_CTX, N_CTX, T_CTX, 4)
        p = np.asarray(positions)
        seen += np.bincount((p[:, None] - p[None, :])[np.tril_indices(len(p))], minlength=T_CTX)
    assert (seen > 0).all(), f"distances never seen: {np.flatnonzero(seen == 0).tolist()}"
    assert seen[T_CTX // 2:].sum() > 0.05 * seen.sum()  # far distances are not starved


def test_refuses_impossible_arguments():
    rng = random.Random(0)
    for args in ((127, 32, 128, 4), (200, 32, 16, 4), (200, 3, 128, 4), (200, 32, 128, 0)):
        with pytest.raises(ValueError):
            segments_sample(rng, *args)


def test_global_batch_depends_on_seed_and_step_only():
    docs = [list(range(d * 1000, d * 1000 + 300)) for d in range(5)]

    def rule(rng, n):
        return segments_sample(rng, n, N_CTX, T_CTX, 4)

    a = global_batch(3, 7, docs, 4, rule)
    assert a == global_batch(3, 7, docs, 4, rule)  # no hidden state: a resumed run draws the same
    assert a != global_batch(3, 8, docs, 4, rule) and a != global_batch(4, 7, docs, 4, rule)
    assert process_slice(a, 0, 2) + process_slice(a, 1, 2) == a  # two processes split the one global batch
    for s in a:
        assert list(s.input_ids) == gather(docs[s.document], s.ranges)


# ----------------------------------------------------------------------------- an absolute-position model


def _text(path: Path) -> Path:
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while learned positions interpolate to longer tables".split()
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + "."
                              for _ in range(150)) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("family, modules, table", [("gpt2", ["c_attn", "c_proj"], "wpe"),
                                                     ("opt", ["k_proj", "out_proj", "q_proj", "v_proj"],
                                                      "embed_positions")])
def test_absolute_table_trains(tmp_path, family, modules, table):
    """GPT-2 / OPT (64 learned positions) → 256 under --method absolute: the segments reach positions past the
    original table, the interpolated table is what the model trains on, and the adapter's record says so."""
    import torch
    from safetensors.torch import load_file

    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.finetune.train import load_model
    from ropeconv.methods import get
    from ropeconv.methods.base import ExtendRequest

    base = add_byte_level_tokenizer(make_tiny(tmp_path, family))
    out = tmp_path / "lora"
    result, _ = cli_json("finetune", "segments", base, "--method", "absolute", "--train-ctx", N_CTX, "--target-ctx",
                         256, "--text", _text(tmp_path / "t.txt"), "--max-steps", 3, "--batch", 2, "--lr", 3e-3,
                         "--device", "cpu", "--json", "-o", out)
    assert len(result["losses"]) == 3 and all(math.isfinite(x) for x in result["losses"])
    record = read_json(out / "ropeconv_rope.json")
    assert (record["method"], record["original_ctx"], record["target_ctx"]) == ("absolute", 64, 256)
    assert record["sampling"] == "segments" and record["segments"] == 4
    assert sorted(read_json(out / "adapter_config.json")["target_modules"]) == modules  # the family's attention
    saved = load_file(out / "adapter_model.safetensors")
    assert all(saved[k].abs().max() > 0 for k in saved if "lora_B" in k)

    plan = get("absolute").plan(load_checkpoint(base).scheme, ExtendRequest(target_ctx=256))
    model = load_model(base, plan, torch.device("cpu"), torch.float32).eval()
    rows = next(m for name, m in model.named_modules() if name.endswith(table)).weight
    assert rows.shape[0] == 256 + plan.offset and not rows.requires_grad
    ids = torch.randint(3, 300, (1, N_CTX), generator=torch.Generator().manual_seed(0))
    far = torch.arange(200, 200 + N_CTX)[None]  # beyond the base's 64 positions
    with torch.no_grad():
        near_logits = model(input_ids=ids, position_ids=torch.arange(N_CTX)[None]).logits
        far_logits = model(input_ids=ids, position_ids=far).logits
    assert (near_logits - far_logits).abs().max() > 1e-4  # the far rows of the table reach the model


def test_help_has_examples(capsys):
    assert run_cli("finetune", "segments", "--help") == 0
    text = capsys.readouterr().out
    assert "Examples:" in text and "--segments" in text and "accelerate launch" in text and "--resume" in text
