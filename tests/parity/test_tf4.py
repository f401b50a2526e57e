"""Outputs read the same in transformers 4.x (the oldest supported major, run from .venv-tf4) as in 5.x.

Every method × architecture cell of the safetensors column is written once, run by 5.x here and by 4.x in one
start of the 4.x environment, and both are compared with the reference (the base under ropeconv's plan). The
LongRoPE config ropeconv wrote before it declared the original length at the top level rides along and must
fail in 4.x, so the check is shown to see what it guards.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ropeconv import methods
from ropeconv.capabilities import family_cells
from ropeconv.families.lookup import ARCHS
from ropeconv.parity import Tolerance, tf4
from ropeconv.parity.probe import plan_passes, probe_ids
from ropeconv.parity.report import compare
from ropeconv.positions import plan_from_json
from tests.conftest import ORIGINAL_CTX, make_tiny, read_json, run_cli
from tests.parity.test_archs import RUN as ROPE_CELLS
from tests.parity.test_archs import method_args

TOKENS = 2 * ORIGINAL_CTX  # crosses the original context, and with it LongRoPE's switch
ROPE_ARCHS = sorted(a for a, spec in ARCHS.items() if spec.position == "rope")
# every safetensors cell the matrix claims (capabilities.family_cell), RoPE ones with parity/test_archs' arguments,
# ALiBi's once plain and once with each switch (--dynamic)
CELLS = (
    [(arch, method, ()) for arch, method in ROPE_CELLS]
    + [(arch, "none", ()) for arch in ROPE_ARCHS]
    + [(arch, method, variant) for arch, method in family_cells("safetensors") if arch not in ROPE_ARCHS
       for variant in [()] + [(o.flag,) for o in methods.get(method).OPTIONS if o.kind is bool]]
)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tf4-bases")
    return {arch: make_tiny(root, arch) for arch in ARCHS}


def _extend(base: Path, out: Path, arch: str, method: str, extra: tuple[str, ...]) -> None:
    factor = () if method == "none" else ("--factor", "4")
    args = method_args(out.parent, base, arch, method) if arch in ROPE_ARCHS else []
    assert run_cli("extend", base, "--method", method, *factor, *extra, *args, "-o", out, "--no-verify", "-q") == 0


def _todays_longrope(out: Path) -> Path:
    """The config ropeconv wrote before: LongRoPE's original length only inside rope_scaling/rope_parameters."""
    old = out.with_name(out.name + "-old")
    old.mkdir()
    for f in out.iterdir():
        if f.is_file():
            (old / f.name).symlink_to(f)
    config = read_json(out / "config.json")
    del config["original_max_position_embeddings"]
    (old / "config.json").unlink()
    (old / "config.json").write_text(json.dumps(config))
    return old


def test_every_safetensors_cell_reads_the_same_in_4x_and_5x(bases, tmp_path, tf4_python, capsys, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from ropeconv.parity.reference import load_reference
    from ropeconv.parity.runtimes import hf

    cpu, tol = torch.device("cpu"), Tolerance()
    cells = []  # (model dir, plan, passes, ids, base)
    for arch, method, extra in CELLS:
        out = tmp_path / f"{arch}-{method}{''.join(extra)}"
        _extend(bases[arch], out, arch, method, extra)
        plan = plan_from_json(read_json(out / "manifest.json")["plan"])
        # a model that is not extended (ALiBi, tables) is defined only up to its own length
        n_tokens = min(TOKENS, plan.target_ctx)
        # two decode steps through the KV cache are enough to take 4.x's cache path (LongRoPE switches per call there)
        passes = [replace(p, decode_steps=min(p.decode_steps, 2)) for p in plan_passes(plan, n_tokens)]
        ids = probe_ids(read_json(out / "config.json")["vocab_size"], n_tokens)
        cells.append((out, plan, passes, ids, bases[arch]))
        if method == "longrope" and arch != "phi3":  # (phi3's always had the key) today's config beside the fixed
            # one: 5.x reads both alike, 4.x must not
            cells.append((_todays_longrope(out), plan, passes, ids, bases[arch]))

    # 4.x (one start of its environment for every cell) runs while 5.x and the reference run here: one core each
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(1) as pool:
            in_4x = pool.submit(tf4.run_jobs, [tf4.Job(d, ids, passes, tf4.attention_for(d))
                                               for d, _, passes, ids, _ in cells], tf4_python)
            rows = []
            for model_dir, plan, passes, ids, base in cells:
                reference_model = load_reference(base, plan, cpu)
                reference = [hf.logits(reference_model, ids[:, : p.n_tokens], p.position_ids(), p.decode_steps)
                             for p in passes]
                rows.append((model_dir.name, plan, passes, reference, hf.run_passes(model_dir, cpu, ids, passes)))
            v4_all, version = in_4x.result()
    finally:
        torch.set_num_threads(threads)
    assert version.startswith("4.")

    table, wrong, todays = [], [], []
    for (name, plan, passes, reference, v5), v4 in zip(rows, v4_all):
        bands_5 = [b for p, r, c in zip(passes, reference, v5) for b in compare(p, r, c, plan.original_ctx)]
        bands_4 = [b for p, r, c in zip(passes, reference, v4) for b in compare(p, r, c, plan.original_ctx)]
        gap = max(float((a - b).abs().max()) for a, b in zip(v4, v5))
        ok5, ok4 = all(b.within(tol) for b in bands_5), all(b.within(tol) for b in bands_4)
        worst4 = max(b.max_abs_logit for b in bands_4)
        table.append(f"{name:<32} 4.x−5.x {gap:9.2e}   4.x−ref {worst4:9.2e}   5.x {'ok' if ok5 else 'FAIL'}  "
                     f"4.x {'ok' if ok4 else 'FAIL'}")
        assert ok5, f"{name}: 5.x disagrees with the reference"
        (todays if name.endswith("-old") else wrong).append((name, ok4, worst4))
    with capsys.disabled():
        print(f"\ntransformers {version} vs 5.x and the reference, {TOKENS}-token probe (ALiBi/table bases unextended: "
              f"their own length), per cell:\n" + "\n".join(table))
    assert [n for n, ok, _ in wrong if not ok] == [], "cells that read differently in transformers 4.x"
    # the check sees the bug it guards against: every old LongRoPE config fails in 4.x (by ~10 logits)
    assert todays and all(not ok and worst > 1.0 for _, ok, worst in todays), todays


def test_verify_runs_both_majors_and_fails_when_4x_reads_it_differently(bases, tmp_path, tf4_python, monkeypatch,
                                                                     capsys):
    out = tmp_path / "out"
    _extend(bases["llama"], out, "llama", "longrope", ())
    monkeypatch.setenv(tf4.ENV, str(tf4_python))
    capsys.readouterr()
    assert run_cli("verify", out, "--tokens", TOKENS, "--json", "-q") == 0
    report = json.loads(capsys.readouterr().out)
    assert [r.split(" ")[1][0] for r in report["ran"]] == ["5", "4"], report["ran"]
    assert any(b["pass_name"].startswith(tf4.PREFIX) for b in report["bands"])

    config = read_json(out / "config.json")
    del config["original_max_position_embeddings"]  # what ropeconv wrote before, its manifest recording that file
    (out / "config.json").write_text(json.dumps(config))
    manifest = read_json(out / "manifest.json")
    manifest["files"]["config.json"] = {"sha256": hashlib.sha256((out / "config.json").read_bytes()).hexdigest(),
                                        "bytes": (out / "config.json").stat().st_size}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert run_cli("verify", out, "--tokens", TOKENS, "-q") == 1
    err = capsys.readouterr().err
    assert "parity failed in transformers 4." in err, err

    monkeypatch.setenv(tf4.ENV, "off")  # without 4.x the same output passes, and the report says 4.x did not run
    assert run_cli("verify", out, "--tokens", TOKENS, "--json", "-q") == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["ran"]) == 1 and any("4.x not run" in n for n in report["notes"])


# ------------------------------------------------------------------------- tokenizers, configs, optimum

TEXTS = ["The quick brown fox", "<s>code: def f(x):\n    return x * 2</s>", "naïve café, 東京 🚀 12:45"]

# run in the 4.x environment: per directory, the tokenizer's ids (or the error that stopped it) and rope_theta
READ_IN_4X = """
import json, sys
from transformers import AutoConfig, AutoTokenizer
texts, out = json.loads(sys.argv[1]), {}
for d in sys.argv[2:]:
    config = AutoConfig.from_pretrained(d)
    try:
        tok = AutoTokenizer.from_pretrained(d)
        ids = [tok(t)["input_ids"] for t in texts] + [[tok.bos_token_id, tok.eos_token_id, tok.unk_token_id]]
    except Exception as exc:
        ids = f"{type(exc).__name__}: {exc}"
    out[d] = {"ids": ids, "rope_theta": getattr(config, "rope_theta", None)}
print(json.dumps(out))
"""


def run_in_4x(tf4_python: Path, code: str, *args: str) -> str:
    import os
    import subprocess

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run([str(tf4_python), "-c", code, *map(str, args)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def with_tokenizer(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny llama saved by transformers 5 (rope_parameters only, rope base 1e5) with a byte-level tokenizer saved by
    5 (tokenizer_class TokenizersBackend), and its YaRN ×4 output as safetensors and ONNX."""
    from tests.conftest import add_byte_level_tokenizer

    root = tmp_path_factory.mktemp("tok")
    base = add_byte_level_tokenizer(make_tiny(root, "llama", rope_theta=100000.0))
    out = root / "out"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "safetensors,onnx", "-o", out,
                   "--no-verify", "-q") == 0
    return base, out


@pytest.fixture(scope="module")
def read_4x(with_tokenizer, tf4_python, tmp_path_factory) -> dict[str, dict]:
    """What 4.x reads from the base, the output, its onnx/ folder and the base with the 4.x keys added (what the demo's
    SmolLM2 fixture does to its checkpoint: ropeconv.fixtures.smollm2._readable_by_4x), in one start of 4.x."""
    from ropeconv.export.hf_config import with_legacy_rope_keys
    from ropeconv.families.lookup import ARCHS

    base, out = with_tokenizer
    fixed = tmp_path_factory.mktemp("fixed")
    (fixed / "config.json").write_text(json.dumps(with_legacy_rope_keys(read_json(base / "config.json"),
                                                                       ARCHS["llama"])))
    read = json.loads(run_in_4x(tf4_python, READ_IN_4X, json.dumps(TEXTS), base, out, out / "onnx", fixed))
    return {"base": read[str(base)], "out": read[str(out)], "onnx": read[str(out / "onnx")], "fixed": read[str(fixed)]}


def test_tokenizer_gives_the_same_ids_in_4x_and_5x(with_tokenizer, read_4x):
    from transformers import AutoTokenizer

    base, out = with_tokenizer
    assert read_json(base / "tokenizer_config.json")["tokenizer_class"] == "TokenizersBackend"  # what 5.x saves
    for home in (out, out / "onnx"):
        config = read_json(home / "tokenizer_config.json")
        assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "is_local" not in config

    def ids_5x(d):
        tok = AutoTokenizer.from_pretrained(d)
        return [tok(t)["input_ids"] for t in TEXTS] + [[tok.bos_token_id, tok.eos_token_id, tok.unk_token_id]]

    expected = ids_5x(base)
    assert ids_5x(out) == ids_5x(out / "onnx") == expected  # 5.x reads the renamed class as it read its own
    assert read_4x["out"]["ids"] == read_4x["onnx"]["ids"] == expected
    assert "TokenizersBackend" in read_4x["base"]["ids"], read_4x["base"]  # the base as 5.x saved it: 4.x cannot


def test_base_saved_by_5x_reads_its_rope_base_in_4x_once_the_4x_keys_are_added(with_tokenizer, read_4x):
    base, out = with_tokenizer
    assert "rope_theta" not in read_json(base / "config.json")
    assert read_4x["base"]["rope_theta"] == 10000.0  # 4.x's fallback: the base's 1e5 is lost
    assert read_4x["fixed"]["rope_theta"] == read_4x["out"]["rope_theta"] == 100000.0


GENERATE_IN_4X = """
import json, sys, torch
from optimum.onnxruntime import ORTModelForCausalLM
from transformers import AutoModelForCausalLM
prompt = torch.tensor([json.loads(sys.argv[1])])
hf = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.float32).eval()
out = {"transformers": hf.generate(prompt, max_new_tokens=int(sys.argv[3]), do_sample=False)[0].tolist()}
for d in sys.argv[4:]:
    ort = ORTModelForCausalLM.from_pretrained(d, use_cache=True, provider="CPUExecutionProvider")
    out[d] = ort.generate(prompt, max_new_tokens=int(sys.argv[3]), do_sample=False)[0].tolist()
print(json.dumps(out))
"""


def test_optimum_ortmodel_generates_what_transformers_generates_in_4x(with_tokenizer, tf4_python, tmp_path):
    """optimum's ORTModelForCausalLM (4.x only) on the ONNX output, greedy far past the original context, against
    transformers 4.x on the safetensors output; an ONNX of the unextended base must drift from it."""
    base, out = with_tokenizer
    plain = tmp_path / "plain"
    assert run_cli("extend", base, "--method", "none", "--to", "onnx", "-o", plain, "--no-verify", "-q") == 0
    prompt = probe_ids(512, ORIGINAL_CTX + 16)[0].tolist()
    new_tokens = ORIGINAL_CTX - 16  # to twice the original context
    got = json.loads(run_in_4x(tf4_python, GENERATE_IN_4X, json.dumps(prompt), out, new_tokens, out / "onnx",
                               plain / "onnx"))
    reference = got["transformers"]
    assert len(reference) == len(prompt) + new_tokens
    assert got[str(out / "onnx")] == reference
    assert got[str(plain / "onnx")] != reference


def test_4x_prefills_in_the_same_chunks_and_stays_within_a_cap(bases, tmp_path, tf4_python, monkeypatch, capsys):
    """The 4.x rows run the probe as the other runtimes do: chunked through the KV cache, not one shot (a
    full-length probe must not need the whole attention at once); under --max-memory they are not run (the 4.x
    environment has no accelerate to place the model) and the report says so."""
    from ropeconv.parity.probe import Pass
    from ropeconv.parity.runtimes import hf

    out = tmp_path / "out"
    _extend(bases["llama"], out, "llama", "yarn", ())
    n = 4 * ORIGINAL_CTX
    ids = probe_ids(read_json(out / "config.json")["vocab_size"], n)
    one_shot = Pass("probe", 0, n, decode_steps=2)
    chunked = replace(one_shot, chunk_tokens=ORIGINAL_CTX // 2)
    assert len(chunked.prefill_chunks()) > len(one_shot.prefill_chunks()) + 4
    [[v4_one, v4_chunked]], _ = tf4.run_jobs([tf4.Job(out, ids, [one_shot, chunked])], tf4_python)
    [v5_chunked] = hf.run_passes(out, torch.device("cpu"), ids, [chunked])
    assert float((v4_one - v4_chunked).abs().max()) <= 1e-5  # issue 16's bound for chunked against one-shot
    assert float((v4_chunked - v5_chunked).abs().max()) <= 1e-5
    assert v4_chunked.shape == (n, read_json(out / "config.json")["vocab_size"])

    monkeypatch.setenv(tf4.ENV, str(tf4_python))
    capsys.readouterr()
    assert run_cli("verify", out, "--tokens", TOKENS, "--max-memory", "cpu=64MiB", "--json", "-q") == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["ran"]) == 1 and report["ran"][0].startswith("transformers 5"), report["ran"]
    assert any("transformers 4.x not run: under --max-memory" in n for n in report["notes"]), report["notes"]
    assert not any(b["pass_name"].startswith(tf4.PREFIX) for b in report["bands"])
