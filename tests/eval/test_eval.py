"""ropeconv eval: the passkey generator and scorer (§14), perplexity (§15) against an independent computation
from transformers' logits, in each runtime (transformers, onnxruntime, llama.cpp), end to end with resume."""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from ropeconv.cli.eval import eval_group
from ropeconv.cli.main import cli
from ropeconv.eval import passkey as pk
from ropeconv.eval import ppl as ppl_mod
from ropeconv.eval import runtimes as rt
from tests.conftest import add_byte_level_tokenizer, assert_refused, listing, make_tiny, run_cli

cli.add_command(eval_group)  # main.py registers it in _register(); done here so the tests stand alone

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEXT = ("Position interpolation divides every frequency; NTK-aware scaling raises the base instead. "
        "The quick brown fox jumps over the lazy dog. It's 12:45 and 3.14159 is pi. ") * 12


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny llama with a real byte-level BPE tokenizer, and its --method none ONNX and f32 GGUF exports."""
    root = tmp_path_factory.mktemp("eval")
    base = add_byte_level_tokenizer(make_tiny(root, "llama"))
    assert run_cli("extend", base, "--method", "none", "--to", "onnx", "--no-verify", "-q", "-o", root / "onnx") == 0
    assert run_cli("extend", base, "--method", "none", "--to", "gguf", "--outtype", "f32", "--no-verify", "-q",
                   "-o", root / "gguf") == 0
    gguf = next((root / "gguf").glob("*.gguf"))
    text = root / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    return {"hf": base, "onnx": root / "onnx", "gguf": gguf, "text": text, "root": root}


def _runtime(models, kind):
    ref = rt.resolve(models[kind])
    assert ref.runtime == kind
    return rt.open_runtime(ref, torch.device("cpu"))


# ------------------------------------------------------------------------------------------ prompt


def test_prompt_is_the_reference_template_byte_for_byte():
    garbage = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    garbage_inf = " ".join([garbage] * 10000)  # YaRN's N
    task = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
            "I will quiz you about the important information there.")
    for n_garbage, depth, key in [(0, 0.0, 1), (1000, 0.3, 4242), (4567, 1.0, 50000), (20001, 0.5, 7)]:
        n_prefix = round(depth * n_garbage)
        expected = "\n".join([task, garbage_inf[:n_prefix],
                              f"The pass key is {key}. Remember it. {key} is the pass key.",
                              garbage_inf[: n_garbage - n_prefix], "What is the pass key? The pass key is"])
        prompt = pk.build_prompt(n_garbage, depth, key)
        assert prompt.text == expected
        assert prompt.text.count(f"The pass key is {key}.") == 1
        assert prompt.text.count(str(key)) == 2  # the filler holds no digits
        assert prompt.text.encode() == expected.encode()


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_key_sentence_sits_at_the_requested_depth(depth):
    for n_garbage in (500, 3001, 40000):
        key = 31337
        prompt = pk.build_prompt(n_garbage, depth, key)
        info = pk.info_line(key)
        assert prompt.text.count(info) == 1
        start = prompt.text.index(info)
        assert start == prompt.info_offset
        filler_before = start - (len(pk.TASK) + 2)  # the task line and two "\n"
        assert filler_before == prompt.n_prefix
        # the key sentence's position within the filler matches the depth to within one filler sentence
        assert abs(filler_before / n_garbage - depth) * n_garbage <= pk.SENTENCE
        after = prompt.text[start + len(info) + 1 : -len(pk.QUESTION) - 1]
        assert len(filler_before * "x") + len(after) == n_garbage


@pytest.mark.parametrize("kind", ["hf", "onnx", "gguf"])
def test_prompt_fits_the_requested_length_in_each_tokenizer(models, kind):
    with _runtime(models, kind) as runtime:
        for length in (300, 1000, 2500):
            for depth in (0.0, 0.37, 1.0):
                prompt, n = pk.fit_prompt(lambda t: len(runtime.tokenize(t)), length, depth, 12345)
                assert n == len(runtime.tokenize(prompt.text))
                assert 0 <= length - n <= pk.tolerance(length), (kind, length, depth, n)
                # one more filler character would not fit (bisection found the largest)
                assert len(runtime.tokenize(pk.build_prompt(prompt.n_garbage + 1, depth, 12345).text)) > length


def test_llama_cpp_tokenizer_is_its_own(models, monkeypatch):
    """The GGUF adapter counts with llama.cpp's tokenizer: no transformers tokenizer is consulted."""
    import transformers

    def refuse(*a, **k):
        raise AssertionError("the GGUF runtime must not load a transformers tokenizer")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    with _runtime(models, "gguf") as runtime:
        ids = runtime.tokenize("The pass key is 123. Remember it.")
        assert ids and runtime.detokenize(ids) == "The pass key is 123. Remember it."


def test_trials_are_deterministic_by_seed():
    draws = [pk.draw_trial(7, 4096, t) for t in range(20)]
    assert draws == [pk.draw_trial(7, 4096, t) for t in range(20)]
    other = [pk.draw_trial(8, 4096, t) for t in range(20)]
    assert draws != other
    assert len({k for k, _ in draws}) > 15  # keys vary across trials
    assert all(pk.KEY_MIN <= k <= pk.KEY_MAX and 0 <= d <= 1 for k, d in draws + other)
    # a grid fixes the depth, not the key
    key, depth = pk.draw_trial(7, 4096, 3, 0.25, 1)
    assert depth == 0.25 and key == pk.draw_trial(7, 4096, 3, 0.25, 1)[0]
    # same seed → identical prompts; different seed → different prompts
    count = len  # character counts suffice for determinism
    p1 = [pk.fit_prompt(count, 2000, d, k)[0].text for k, d in draws[:5]]
    p2 = [pk.fit_prompt(count, 2000, d, k)[0].text for k, d in [pk.draw_trial(7, 4096, t) for t in range(5)]]
    p3 = [pk.fit_prompt(count, 2000, d, k)[0].text for k, d in other[:5]]
    assert p1 == p2 and p1 != p3


# ------------------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize("output, key, hit", [
    (" 12345", 12345, True),
    ("12345", 12345, True),
    ("\n\n  12345.", 12345, True),
    (" 12345. Remember it", 12345, True),
    (" 12345abc", 12345, True),
    ("", 12345, False),
    (" no digits here", 12345, False),
    (" 7 and then 12345", 12345, False),  # another number first
    (" 1234", 12345, False),
    (" 123456", 12345, False),
    (" 012345", 12345, True),  # YaRN compares int(match) with the key
    (" 12,345", 12345, False),  # the first integer is 12
    (" 12 345", 12345, False),
    (" -12345", 12345, True),  # the regex takes digits only
])
def test_first_integer_scoring(output, key, hit):
    assert pk.score(output, key) is hit


def test_first_integer_values():
    assert pk.first_integer("abc") is None
    assert pk.first_integer(" 0042x7") == 42
    assert pk.first_integer("is 12,345") == 12


def test_parse_lengths_and_depths():
    from ropeconv.errors import InputError

    assert pk.parse_lengths("4k,8k,12000, 1k") == [1024, 4096, 8192, 12000]
    for bad in ("", "4x", "0", "1.5"):
        with pytest.raises(InputError):
            pk.parse_lengths(bad)
    assert pk.parse_depths("random") is None
    assert pk.parse_depths("1,0,0.5") == [0.0, 0.5, 1.0]
    for bad in ("1.5", "a", "-0.1"):
        with pytest.raises(InputError):
            pk.parse_depths(bad)


# ------------------------------------------------------------------------------------------ perplexity


@functools.cache
def _reference_nll(base: Path, text: str, length: int, stride: int | None) -> float:
    """YaRN's loop written out independently: labels masked with -100, shifted log_softmax cross-entropy on
    AutoModelForCausalLM's logits, window-mean NLL."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    seq_len = ids.shape[1] if stride else length  # --truncate: the first window only
    stride = stride or length
    nlls, prev_end = [], 0
    for begin in range(0, seq_len, stride):
        end = min(begin + length, seq_len)
        trg_len = end - prev_end
        x = ids[:, begin:end]
        labels = x.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            logits = model(x).logits.double()
        lp = torch.log_softmax(logits[0, :-1], dim=-1)
        target = labels[0, 1:]
        keep = target != -100
        nll = -lp[keep].gather(1, target[keep][:, None]).mean()
        nlls.append(float(nll))
        prev_end = end
        if end == seq_len:
            break
    return sum(nlls) / len(nlls)


# transformers reloading the same weights: the same float32 logits, both softmaxes in float64 (measured 1e-15);
# onnxruntime's fp32 graph reorders sums: logits within ~1e-6, NLL measured ≤ 3e-7;
# llama.cpp f32: its matmuls and float32 rope (error growing with position, ~1e-3 in logits near 8k on
# SmolLM2) differ from torch by ~1e-5 in logits at these ≤ 64 positions: NLL measured ≤ 2e-7, so 2e-5 leaves
# room. (The window-mean rule itself is pinned by test_window_mean_not_token_weighted: on this random model
# the two rules differ by only ~1e-5.)
NLL_TOL = {"hf": 1e-9, "onnx": 1e-5, "gguf": 2e-5}


@pytest.mark.parametrize("kind", ["hf", "onnx", "gguf"])
def test_perplexity_matches_transformers_logits(models, kind):
    base = models["hf"]
    with _runtime(models, kind) as runtime:
        assert runtime.bos_id is None  # this tokenizer adds no BOS: a window is L text tokens
        from transformers import AutoTokenizer

        ids = runtime.tokenize_plain(TEXT)
        assert ids == AutoTokenizer.from_pretrained(base)(TEXT, add_special_tokens=False)["input_ids"]
        for length, stride in [(64, None), (48, 24), (64, 40)]:
            got = ppl_mod.perplexity(ids, length, runtime.token_logprobs, runtime.bos_id, stride)
            want = _reference_nll(base, TEXT, length, stride)
            print(f"{kind} L={length} stride={stride}: |Δnll| = {abs(got['nll'] - want):.2e}")
            assert abs(got["nll"] - want) <= NLL_TOL[kind], (kind, length, stride, got["nll"], want)
            assert got["ppl"] == pytest.approx(math.exp(got["nll"]))
            if stride is None:
                assert got["tokens"] == length - 1 and got["windows"] == 1
            else:
                assert got["tokens"] == len(ids) - 1  # every token after the first is scored exactly once


def test_sliding_windows_score_every_token_once():
    for n, width, stride in [(100, 32, 8), (100, 32, 32), (33, 32, 5), (32, 32, 1)]:
        spans = ppl_mod.windows(n, width, stride)
        assert sum(t for _, _, t in spans) == n
        assert spans[-1][1] == n
        assert all(end - begin <= width and t <= end - begin for begin, end, t in spans)


def test_window_mean_not_token_weighted():
    """§15: PPL = exp(mean over windows of each window's mean NLL). Token i costs i/100 nats."""
    def logprobs(ids):
        return -torch.tensor(ids[1:], dtype=torch.float64).numpy() / 100

    ids = list(range(40))
    result = ppl_mod.perplexity(ids, 16, logprobs, bos_id=None, stride=8)
    # windows [0,16) scores 1..15, [8,24) scores 16..23, [16,32) 24..31, [24,40) 32..39
    groups = [range(1, 16), range(16, 24), range(24, 32), range(32, 40)]
    window_mean = sum(sum(g) / len(g) for g in groups) / 4 / 100
    assert result["windows"] == 4 and result["tokens"] == 39
    assert result["nll"] == pytest.approx(window_mean)
    assert result["nll_tokens"] == pytest.approx(sum(range(1, 40)) / 39 / 100)
    assert result["ppl"] == pytest.approx(math.exp(window_mean))


def test_bos_is_prepended_to_every_window():
    seen = []

    def logprobs(ids):
        seen.append(list(ids))
        return -torch.ones(len(ids) - 1, dtype=torch.float64).numpy()

    result = ppl_mod.perplexity(list(range(10, 40)), 9, logprobs, bos_id=1, stride=4)
    assert all(w[0] == 1 and len(w) <= 9 for w in seen)
    assert result["tokens"] == 30 and result["nll"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ end to end


def _png_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    import matplotlib.pyplot as plt

    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


@pytest.mark.parametrize("kind", ["hf", "onnx", "gguf"])
def test_passkey_end_to_end_and_resume(models, kind, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pk"
    model = models[kind] if kind != "onnx" else models["onnx"] / "onnx" / "model.onnx"
    args = ["eval", "passkey", model, "--lengths", "200,300", "--trials", "2", "--seed", "3", "-o", out]
    assert run_cli(*args) == 0
    captured = capsys.readouterr()
    assert captured.err.count("trial ") == 4  # progress per trial on stderr
    doc = json.loads((out / "passkey.json").read_text())
    assert doc["runtime"] == rt.runtime_name(kind) and doc["model"] == str(model)
    assert doc["settings"]["seed"] == 3 and doc["settings"]["lengths"] == [200, 300]
    assert len(doc["trials"]) == 4
    for r in doc["trials"]:
        assert set(r) >= {"length", "tokens", "depth", "key", "output", "hit"}
        assert 0 <= r["length"] - r["tokens"] <= pk.tolerance(r["length"])
        assert r["hit"] == pk.score(r["output"], r["key"])
    assert [p["trials"] for p in doc["summary"]["per_length"]] == [2, 2]
    _png_ok(out / "passkey.png")
    assert "accuracy" in captured.out

    # rerun: everything from the cache, nothing generated
    def no_trials(*a, **k):
        raise AssertionError("recomputed a cached trial")

    with monkeypatch.context() as m:
        m.setattr(pk, "run_trial", no_trials)
        assert run_cli(*args) == 0
    captured = capsys.readouterr()
    assert "trial " not in captured.err and "4 from the cache" in captured.err
    assert json.loads((out / "passkey.json").read_text())["trials"] == doc["trials"]

    # an interrupted sweep: drop the last finished trial from the cache; a wider sweep adds one trial per length
    cache = next((out / "cache").glob("passkey-*.jsonl"))
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # a torn last line
    calls = []
    original = pk.run_trial
    monkeypatch.setattr(pk, "run_trial", lambda *a, **k: calls.append(a[1].id) or original(*a, **k))
    assert run_cli(*args[:-4], "--trials", "3", "--seed", "3", "-o", out) == 0
    assert sorted(calls) == sorted([doc["trials"][-1]["id"], "200:2:r", "300:2:r"])
    again = json.loads((out / "passkey.json").read_text())["trials"]
    assert [r for r in again if r["trial"] < 2] == doc["trials"]  # the same trial reproduces exactly


def test_passkey_depth_grid(models, tmp_path, capsys):
    out = tmp_path / "grid"
    assert run_cli("eval", "passkey", models["hf"], "--lengths", "250", "--trials", "1", "--depths", "0,0.5,1",
                   "-q", "--json", "-o", out) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["depth"] for r in doc["trials"]] == [0.0, 0.5, 1.0]
    assert [c["depth"] for c in doc["summary"]["per_length_depth"]] == ["0", "0.5", "1"]
    for r in doc["trials"]:
        assert abs(r["n_prefix"] - r["depth"] * r["n_garbage"]) <= 0.5
    _png_ok(out / "passkey.png")


def test_ppl_end_to_end_several_models_and_resume(models, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ppl"
    onnx = models["onnx"] / "onnx" / "model.onnx"
    args = ["eval", "ppl", models["hf"], onnx, models["gguf"], "--text", models["text"], "--lengths", "32,64",
            "--stride", "32", "-o", out]
    assert run_cli(*args) == 0
    captured = capsys.readouterr()
    assert "windows" in captured.err and "sliding window, stride 32" in captured.out
    doc = json.loads((out / "ppl.json").read_text())
    assert doc["settings"]["mode"] == "sliding window, stride 32"
    assert [(r["runtime"], r["length"]) for r in doc["results"]] == [
        (rt.runtime_name(k), L) for k in ("hf", "onnx", "gguf") for L in (32, 64)]
    for r in doc["results"]:
        assert set(r) >= {"tokens", "nll", "ppl", "mode", "model", "label"}
        assert r["ppl"] == pytest.approx(math.exp(r["nll"]))
    by = {(r["runtime"], r["length"]): r["nll"] for r in doc["results"]}
    for L in (32, 64):  # the same weights in three runtimes
        assert abs(by[("onnxruntime", L)] - by[("transformers", L)]) < 1e-4
        assert abs(by[("llama.cpp", L)] - by[("transformers", L)]) < 3e-3
    _png_ok(out / "ppl.png")

    def no_ppl(*a, **k):
        raise AssertionError("recomputed a cached perplexity")

    monkeypatch.setattr(ppl_mod, "perplexity", no_ppl)
    assert run_cli(*args) == 0
    assert capsys.readouterr().err.count("from the cache") == 6
    assert json.loads((out / "ppl.json").read_text())["results"] == doc["results"]


def test_ppl_single_pass_mode_is_stated(models, tmp_path, capsys):
    assert run_cli("eval", "ppl", models["hf"], "--text", models["text"], "--lengths", "64", "--json", "-q",
                   "--cache-dir", tmp_path / "c") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["settings"]["mode"].startswith("single pass")
    assert doc["results"][0]["tokens"] == 63 and doc["results"][0]["windows"] == 1


# ------------------------------------------------------------------------------------------ refusals


def _refused(capsys, out: Path, *args, mentions=()):
    before = listing(out.parent)
    rc = run_cli(*args, "-o", out)
    assert_refused(capsys, rc, out, before, mentions=mentions)


def test_refusals(models, tmp_path, capsys, monkeypatch):
    out = tmp_path / "res"
    _refused(capsys, out, "eval", "passkey", tmp_path / "missing", "--lengths", "1k", mentions=("not found",))
    _refused(capsys, out, "eval", "passkey", models["hf"], "--lengths", "4x", mentions=("--lengths",))
    _refused(capsys, out, "eval", "passkey", models["hf"], "--lengths", "20", mentions=("template",))
    _refused(capsys, out, "eval", "passkey", models["hf"], "--lengths", "1k", "--depths", "2",
             mentions=("--depths",))
    _refused(capsys, out, "eval", "passkey", models["hf"], "--lengths", "1k", "--runtime", "gguf",
             mentions=("gguf",))
    _refused(capsys, out, "eval", "ppl", models["hf"], "--text", tmp_path / "nope.txt", "--lengths", "64",
             mentions=("--text",))
    _refused(capsys, out, "eval", "ppl", models["hf"], models["gguf"], "--text", models["text"], "--lengths",
             "64,100k", mentions=("too short",))
    _refused(capsys, out, "eval", "ppl", models["hf"], "--text", models["text"], "--lengths", "32,64",
             "--stride", "33", mentions=("--stride",))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "llama_cpp", None)  # llama-cpp-python not installed
        _refused(capsys, out, "eval", "passkey", models["gguf"], "--lengths", "1k", mentions=("llama-cpp-python",))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnxruntime", None)
        _refused(capsys, out, "eval", "ppl", models["onnx"], "--runtime", "onnx", "--text", models["text"],
                 "--lengths", "64", mentions=("onnxruntime",))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "matplotlib", None)
        _refused(capsys, out, "eval", "passkey", models["hf"], "--lengths", "300", mentions=("matplotlib",))
        _refused(capsys, out, "eval", "ppl", models["hf"], "--text", models["text"], "--lengths", "64",
                 mentions=("matplotlib",))


def test_runtime_auto_picks_from_the_path(models):
    assert rt.resolve(models["hf"]).runtime == "hf"
    assert rt.resolve(models["onnx"]).runtime == "onnx"  # an output directory holding onnx/model.onnx
    assert rt.resolve(models["onnx"] / "onnx" / "model.onnx").runtime == "onnx"
    assert rt.resolve(models["gguf"]).runtime == "gguf"
    assert rt.resolve(models["gguf"].parent).runtime == "gguf"
    hashes = {rt.model_hash(rt.resolve(models[k])) for k in ("hf", "onnx", "gguf")}
    assert len(hashes) == 3


def test_help_has_examples():
    from click.testing import CliRunner

    for sub in ("passkey", "ppl"):
        result = CliRunner().invoke(eval_group, [sub, "--help"])
        assert result.exit_code == 0 and "Examples:" in result.output and "ropeconv eval " + sub in result.output


def test_ppl_reads_only_the_start_it_scores_and_bounds_a_sliding_window(models, tmp_path, capsys, monkeypatch):
    """Before: eval ppl read --text whole (a 300 MB text aborted in the tokenizer at 3.3 GB). A single pass scores
    the first window, so bytes past the budget are never read — here invalid UTF-8 that a whole read refuses; a
    sliding window scores everything, so a text over the cap is refused, not cut."""
    from ropeconv.eval import text as text_mod

    good = Path(models["text"]).read_bytes()
    text = tmp_path / "long.txt"
    text.write_bytes(good * (2 * text_mod.MIN_TEXT_BYTES // len(good) + 1) + b"\xff\xfe tail")
    assert run_cli("eval", "ppl", models["hf"], "--text", text, "--lengths", "64", "--json", "-q",
                   "--cache-dir", tmp_path / "c") == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["tokens"] == 63
    monkeypatch.setattr(text_mod, "MAX_TEXT_BYTES", 3 * text_mod.MIN_TEXT_BYTES)
    _refused(capsys, tmp_path / "res", "eval", "ppl", models["hf"], "--text", text, "--lengths", "32",
             "--stride", "16", mentions=("not UTF-8",))
    monkeypatch.setattr(text_mod, "MAX_TEXT_BYTES", text_mod.MIN_TEXT_BYTES)
    _refused(capsys, tmp_path / "res", "eval", "ppl", models["hf"], "--text", text, "--lengths", "32",
             "--stride", "16", mentions=("--stride", "whole text"))


@pytest.mark.parametrize("kind", ["passkey", "ppl"])
def test_a_damaged_cached_record_is_refused_naming_its_line(models, tmp_path, capsys, kind):
    """Before: eval read cached records unchecked, so a trial whose hit was the text "no" ended in a TypeError
    traceback in summarize (and a ppl record whose nll was text in the report)."""
    cache = tmp_path / "c"
    args = (["eval", "passkey", models["hf"], "--lengths", "256", "--trials", "1", "--device", "cpu"] if kind == "passkey"
            else ["eval", "ppl", models["hf"], "--text", models["text"], "--lengths", "64"])
    assert run_cli(*args, "--json", "-q", "--cache-dir", cache) == 0
    capsys.readouterr()
    [file] = cache.glob(f"{kind}-*.jsonl")
    lines = file.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["record"]["hit" if kind == "passkey" else "nll"] = "no"
    file.write_text("\n".join([lines[0], json.dumps(entry)] + lines[2:]) + "\n")
    _refused(capsys, tmp_path / "res", *args, "--cache-dir", cache, mentions=(f"{file.name}:2",))


def test_eval_out_inside_a_model_or_its_output_folder_is_refused(models, capsys):
    """Before: `eval … -o` inside the ropeconv output holding the model evaluated put ppl.json, ppl.png and cache/
    there, so its manifest no longer listed every file and `extend --force` refused to replace it."""
    onnx_model = models["onnx"] / "onnx" / "model.onnx"
    for model, out in ((onnx_model, models["onnx"] / "eval"), (models["hf"], models["hf"] / "eval")):
        before = sorted(p.name for p in out.parent.iterdir())
        rc = run_cli("eval", "ppl", model, "--text", models["text"], "--lengths", "64", "-q", "-o", out)
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert "-o" in err and ("model" in err or "output" in err), err
        assert sorted(p.name for p in out.parent.iterdir()) == before
