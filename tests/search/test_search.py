"""`ropeconv search longrope` on tiny random models: the files it writes, the search never worse than its seeds,
the fitness equal to what the baked artifact computes, one seed one result, resumption after an interruption,
refusals, the round trip into `extend` with parity in all three formats, and the shipped LongRoPE recipes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ropeconv.fixtures.tokenizers import CORPUS
from ropeconv.search import evolution as evo
from tests.conftest import add_byte_level_tokenizer, assert_refused, listing, make_tiny, read_json, run_cli

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL, TARGET = 256, 512  # llama.cpp refuses LongRoPE below an original context of 256
SIZES = ("--population", "6", "--generations", "2", "--short-generations", "1")
CAP_KIB = 320  # below the tiny llama's float32 weights, above its largest layer: some layers go to disk


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine its spin-waits cost ~15× (measured:
    0.04 s vs 0.7 s per 128-token evaluation while other jobs ran)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return add_byte_level_tokenizer(make_tiny(tmp_path_factory.mktemp("search-base"), "llama",
                                              max_position_embeddings=ORIGINAL))


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("search-text") / "calibration.txt"
    path.write_text("\n".join(CORPUS * 30), encoding="utf-8")
    return path


def search(capsys, base: Path, text: Path, out: Path, cache: Path, *extra, target: int = TARGET) -> tuple[int, dict]:
    capsys.readouterr()
    rc = run_cli("search", "longrope", base, "--target-ctx", target, "--text", text, *SIZES, "--device", "cpu",
                 "--cache-dir", cache, "-o", out, "--json", "-q", *extra)
    captured = capsys.readouterr()
    return rc, (json.loads(captured.out) if rc == 0 else {"stderr": captured.err})


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.with_name(out.stem + ".search.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def searched(tiny, text, tmp_path_factory):
    """One uninterrupted search: (factors file, its --json result document)."""
    root = tmp_path_factory.mktemp("searched")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = run_cli("search", "longrope", tiny, "--target-ctx", TARGET, "--text", text, *SIZES, "--device", "cpu",
                     "--cache-dir", root / "cache", "-o", root / "factors.json", "--json", "-q")
    assert rc == 0
    return root / "factors.json", json.loads(stdout.getvalue())


# ------------------------------------------------------------------------------------------- the search


def test_the_search_writes_extend_factors_a_log_and_a_curve_and_beats_its_seeds(searched):
    out, result = searched
    factors = read_json(out)
    n_pairs = 8  # head_dim 16 / 2
    assert len(factors["short_factor"]) == len(factors["long_factor"]) == n_pairs
    records = log_records(out)
    assert len(records) == result["evaluations"]["computed"] == result["long"]["evaluations"] + \
        result["short"]["evaluations"]
    assert result["evaluations"]["cached"] == 0
    space = evo.SearchSpace(n_pairs, result["max_factor"])
    assert result["max_factor"] == 1.25 * 2
    for r in records:  # every candidate respects the paper's constraints
        assert evo.satisfies(np.array(r["factors"]), space), r
    long = [r for r in records if r["phase"] == "long"]
    short = [r for r in records if r["phase"] == "short"]
    assert {r["length"] for r in long} == {TARGET} and {r["length"] for r in short} == {ORIGINAL}
    seeds = {r["origin"]: r["ppl"] for r in long if r["origin"].startswith("seed:")}
    assert set(seeds) == {"seed:linear", "seed:ntk", "seed:yarn", "seed:dynamic"}
    # never worse than the best seed, and the published factors are the best candidate of the log
    assert result["long"]["ppl"] <= min(seeds.values())
    best = min(long, key=lambda r: (r["ppl"], r["index"]))
    assert factors["long_factor"] == best["factors"] and result["long"]["ppl"] == best["ppl"]
    assert factors["short_factor"] == min(short, key=lambda r: (r["ppl"], r["index"]))["factors"]
    assert result["long"]["best_per_generation"][0] == min(r["ppl"] for r in long if r["generation"] == 0)
    curve = out.with_name("factors.search.png").read_bytes()
    assert curve[:8] == b"\x89PNG\r\n\x1a\n"
    assert factors["_search"]["target_ctx"] == TARGET and factors["_search"]["seed"] == 0


def test_one_seed_one_result(searched, tiny, text, tmp_path, capsys):
    first, _ = searched
    again = tmp_path / "factors.json"
    rc, result = search(capsys, tiny, text, again, tmp_path / "fresh-cache")  # recomputed, not read back
    assert rc == 0 and result["evaluations"]["cached"] == 0
    assert again.read_bytes() == first.read_bytes()
    strip = ("seconds", "cached")
    assert [{k: v for k, v in r.items() if k not in strip} for r in log_records(again)] == \
        [{k: v for k, v in r.items() if k not in strip} for r in log_records(first)]
    other = tmp_path / "other-seed.json"
    rc, _ = search(capsys, tiny, text, other, tmp_path / "fresh-cache", "--seed", "1")
    assert rc == 0
    assert [r["factors"] for r in log_records(other)] != [r["factors"] for r in log_records(first)]


def test_a_search_under_a_memory_cap_offloads_and_finds_the_same_factors(searched, tiny, text, tmp_path, capsys):
    """--max-memory places the model as verify does (accelerate: CPU up to the cap, the rest on disk in a scratch
    folder beside -o, removed after): the fitness values, and so the factors, are the uncapped search's."""
    first, _ = searched
    capped = tmp_path / "out" / "capped.json"
    capped.parent.mkdir()
    rc, result = search(capsys, tiny, text, capped, tmp_path / "fresh-cache", "--max-memory", f"cpu={CAP_KIB}KiB")
    assert rc == 0, result
    assert capped.read_bytes() == first.read_bytes()
    assert [r["ppl"] for r in log_records(capped)] == [r["ppl"] for r in log_records(first)]
    assert sorted(p.name for p in capped.parent.iterdir()) == ["capped.json", "capped.search.jsonl",
                                                               "capped.search.png"]  # no scratch left
    too_small = tmp_path / "too-small.json"
    rc, result = search(capsys, tiny, text, too_small, tmp_path / "fresh-cache", "--max-memory", "cpu=1KiB")
    assert rc == 2 and "--max-memory" in result["stderr"] and not too_small.exists()


def test_an_interrupted_search_resumes_to_the_same_result(searched, tiny, text, tmp_path, capsys, monkeypatch):
    from ropeconv.search.fitness import Scorer

    first, uninterrupted = searched
    real = Scorer.perplexity
    calls = {"n": 0}
    k = 5

    def interrupt_after_k(self, plan, length):
        if calls["n"] == k:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(self, plan, length)

    monkeypatch.setattr(Scorer, "perplexity", interrupt_after_k)
    out, cache = tmp_path / "factors.json", tmp_path / "cache"
    capsys.readouterr()
    rc = run_cli("search", "longrope", tiny, "--target-ctx", TARGET, "--text", text, *SIZES, "--device", "cpu",
                 "--cache-dir", cache, "-o", out, "-q")
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted" in err, err
    assert listing(tmp_path) == ["cache"]  # nothing published: no factors, no log, no curve
    [cache_file] = cache.glob("*.jsonl")
    assert len(cache_file.read_text().splitlines()) == 1 + k  # the key line, then one line per finished evaluation

    monkeypatch.setattr(Scorer, "perplexity", real)
    rc, resumed = search(capsys, tiny, text, out, cache)
    assert rc == 0
    assert resumed["evaluations"]["cached"] == k
    assert resumed["evaluations"]["computed"] == uninterrupted["evaluations"]["computed"] - k
    assert out.read_bytes() == first.read_bytes()


# ------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("case,mentions", [
    ("short-text", ("tokens", "needs")),
    ("no-text", ("--text", "not found")),
    ("alibi", ("RoPE",)),
    ("gguf", ("HuggingFace",)),
    ("eval-ctx", ("--eval-ctx",)),
    ("short-ctx", ("--short-ctx",)),
    ("population", ("--population",)),
    ("target", ("--target-ctx",)),
    ("out-dir", ("directory",)),
])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(case, mentions, tiny, text, tmp_path, capsys):
    base, args, out = tiny, [], tmp_path / "factors.json"
    text_path = text
    if case == "short-text":
        text_path = tmp_path / "short.txt"
        text_path.write_text(CORPUS[0])
    elif case == "no-text":
        text_path = tmp_path / "missing.txt"
    elif case == "alibi":
        base = make_tiny(tmp_path, "bloom")
    elif case == "gguf":
        base = tmp_path / "model.gguf"
        base.write_bytes(b"GGUF")
    elif case == "eval-ctx":
        args = ["--eval-ctx", str(ORIGINAL)]
    elif case == "short-ctx":
        args = ["--short-ctx", str(ORIGINAL + 1)]
    elif case == "population":
        args = ["--population", "2"]
    elif case == "out-dir":
        out = tmp_path / "somewhere"
        out.mkdir()
    target = 64 if case == "target" else TARGET
    before = listing(tmp_path)
    rc = run_cli("search", "longrope", base, "--target-ctx", target, "--text", text_path, "--device", "cpu",
                 "--cache-dir", tmp_path / "cache", "-o", out, *args)
    assert_refused(capsys, rc, out if case != "out-dir" else tmp_path / "factors.json", before, mentions=mentions)
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------ round trip into extend


def test_searched_factors_bake_into_all_three_formats_and_score_as_searched(searched, tiny, text, tmp_path, capsys):
    """The searched file goes into `extend --method longrope` unchanged, every format proves the plan the search
    scored, and the extended model reloaded through its own config.json in transformers (`eval ppl`: full logits,
    not the search's chunked path) has the perplexity the search reported."""
    factors, result = searched
    out = tmp_path / "out"
    capsys.readouterr()
    rc = run_cli("extend", tiny, "--method", "longrope", "--factors", factors, "--target-ctx", TARGET,
                 "--to", "safetensors,gguf,onnx", "--outtype", "f32", "--device", "cpu", "--json", "-o", out)
    assert rc == 0, capsys.readouterr().err
    manifest = read_json(out / "manifest.json")
    plan = manifest["plan"]
    searched_lists = read_json(factors)
    assert plan["long_divisors"] == searched_lists["long_factor"] and plan["divisors"] == searched_lists["short_factor"]
    assert plan["attention_factor"] == result["attention_factor"]
    assert set(manifest["parity"]) == {"safetensors", "gguf", "onnx"}, manifest["parity"]
    assert all(p["passed"] for p in manifest["parity"].values()), manifest["parity"]

    def ppl(model) -> float:
        capsys.readouterr()
        assert run_cli("eval", "ppl", model, "--text", text, "--lengths", str(TARGET), "--runtime", "hf",
                       "--device", "cpu", "--cache-dir", tmp_path / "eval-cache", "--json", "-q") == 0
        return json.loads(capsys.readouterr().out)["results"][0]["ppl"]

    extended = ppl(out)
    assert math.isclose(extended, result["long"]["ppl"], rel_tol=1e-5), (extended, result["long"]["ppl"])
    assert not math.isclose(ppl(tiny), extended, rel_tol=1e-3)  # the base at that length is another model


# ------------------------------------------------------------------------------------------ recipes

# sha256 of json.dumps({"short_factor": [...], "long_factor": [...]}, sort_keys=True) over the lists of
# ../shared/reference/phi-3-mini-128k-longrope.json (rope_scaling of microsoft/Phi-3-mini-128k-instruct's
# config.json), computed when the sidecar was written: it holds the sidecar to the published lists in a clone
# that has no shared/ folder beside it.
PHI3_LISTS_SHA256 = "6bfa69195b3ea0ff82f3a5477f3cbd5d6aa72165f6401d7aa8aeebc5c1e1c403"
PHI3_REFERENCE = [p / "shared" / "reference" / "phi-3-mini-128k-longrope.json" for p in (ROOT.parent, ROOT.parents[1])]


def _lists(data: dict) -> dict:
    return {"short_factor": data["short_factor"], "long_factor": data["long_factor"]}


def test_the_phi3_recipe_bakes_the_published_factor_lists():
    recipe = yaml.safe_load((ROOT / "recipes" / "phi-3-mini-longrope-128k.yaml").read_text())
    assert recipe["method"] == {"name": "longrope", "target_ctx": 131072,
                                "factors": "phi-3-mini-longrope-128k.factors.json"}
    sidecar = read_json(ROOT / "recipes" / recipe["method"]["factors"])
    assert len(sidecar["short_factor"]) == len(sidecar["long_factor"]) == 48  # Phi-3-mini: head_dim 96
    digest = hashlib.sha256(json.dumps(_lists(sidecar), sort_keys=True).encode()).hexdigest()
    assert digest == PHI3_LISTS_SHA256
    reference = next((p for p in PHI3_REFERENCE if p.is_file()), None)
    if reference is not None:  # beside a checkout with shared/: the values themselves
        published = read_json(reference)
        assert _lists(sidecar) == _lists(published)
        assert published["max_position_embeddings"] == recipe["method"]["target_ctx"]


def test_the_smollm2_recipe_bakes_a_searched_factors_file():
    recipe = yaml.safe_load((ROOT / "recipes" / "smollm2-135m-longrope-16k.yaml").read_text())
    assert recipe["method"]["name"] == "longrope" and recipe["base"]["path"] == "../work/smollm2-135m"
    sidecar = read_json(ROOT / "recipes" / recipe["method"]["factors"])
    record = sidecar["_search"]  # written by `ropeconv search longrope`, not by hand
    assert record["method"] == "longrope" and record["target_ctx"] == recipe["method"]["target_ctx"] == 16384
    assert record["original_ctx"] == 8192
    space = evo.SearchSpace(32, record["max_factor"])  # SmolLM2-135M: head_dim 64
    assert evo.satisfies(np.array(sidecar["long_factor"]), space)
    assert evo.satisfies(np.array(sidecar["short_factor"]), space)
    assert record["long"]["ppl"] <= min(record["long"]["seed_ppl"].values())


# --------------------------------------------------------------------------------- log-probabilities


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_chunked_logprobs_equal_the_models_own_logits(model_type, tmp_path):
    """The fitness reads log-probabilities through the output head a chunk at a time (memory ∝ length × hidden);
    they must be the model's own, gemma2's final logit soft-capping included."""
    from transformers import AutoModelForCausalLM

    from ropeconv.search.fitness import token_logprobs

    model = AutoModelForCausalLM.from_pretrained(make_tiny(tmp_path, model_type), dtype=torch.float32).eval()
    ids = list(np.random.default_rng(0).integers(3, 500, 100))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), position_ids=torch.arange(100)[None]).logits[0, :-1]
    expected = torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()
    got = token_logprobs(model, ids, chunk=32)
    assert np.abs(got - expected).max() < 1e-5
    if model_type == "gemma2":  # the cap matters here: without it the values move
        model.config.final_logit_softcapping = None
        assert np.abs(token_logprobs(model, ids, chunk=32) - expected).max() > 1e-3
