"""What `ropeconv search longrope` reads and computes, against hostile input (issue 26): sizes bounded before
anything is drawn, the fitness cache read strictly and boundedly (regular files, line and file caps, one line
naming file:line), only finite fitness values cached and published, a bounded prefix of a huge --text, and the
scorer on gemma3_text (a second plan swaps the first, never nests it) and under disk offload (inputs placed off the meta device)."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from ropeconv.errors import InputError
from ropeconv.eval import cache as cache_mod
from ropeconv.search import evolution as evo
from ropeconv.search import limits
from tests.conftest import assert_refused, listing, make_tiny, run_cli
from tests.search.test_search import ORIGINAL, TARGET, _one_thread, text, tiny  # noqa: F401  (the same fixtures: a tiny base)


def search(base: Path, text: Path, out: Path, cache: Path, *extra) -> int:
    return run_cli("search", "longrope", base, "--target-ctx", TARGET, "--text", text, "--population", "4",
                   "--generations", "0", "--short-generations", "0", "--device", "cpu", "--cache-dir", cache,
                   "-o", out, "-q", *extra)


# ------------------------------------------------------------------------------------------------ sizes


@pytest.mark.parametrize("args, mentions", [
    (("--population", "1099511627776"), ("--population",)),  # before: drew candidates forever, scoring none
    (("--population", "3"), ("--population",)),
    (("--generations", "1001"), ("--generations",)),
    (("--population", "1024", "--generations", "1000"), ("513024 evaluations",)),
    (("--short-generations", "-1"), ("--short-generations",)),
    (("--seed", "-1"), ("--seed",)),  # before: numpy's ValueError, a traceback
    (("--samples", "0"), ("--samples",)),
    (("--max-factor", "1e300"), ("--max-factor",)),  # before: a 1e302-point grid, a traceback
    (("--max-factor", "nan"), ("--max-factor",)),
])
def test_search_sizes_are_bounded_before_anything_is_drawn(args, mentions, tiny, text, tmp_path, capsys):
    out = tmp_path / "factors.json"
    capsys.readouterr()
    rc = run_cli("search", "longrope", tiny, "--target-ctx", TARGET, "--text", text, "--device", "cpu",
                 "--cache-dir", tmp_path / "cache", "-o", out, "-q", *args)
    assert_refused(capsys, rc, out, [], mentions=mentions)


# ------------------------------------------------------------------------------------------- the cache


def _cache(directory: Path, check=lambda record: None) -> cache_mod.ResultCache:
    return cache_mod.ResultCache(directory, "longrope", {"kind": "test", "length": 8}, check=check)


def _write(cache: cache_mod.ResultCache, *lines: bytes | str) -> None:
    header = json.dumps({"cache": cache.key}, sort_keys=True)
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    cache.path.write_bytes(b"".join(x if isinstance(x, bytes) else x.encode() for x in (header + "\n", *lines)))


GOOD = json.dumps({"id": "1.0,1.5", "record": {"ppl": 2.5, "nll": math.log(2.5), "tokens": 8}}) + "\n"


@pytest.mark.parametrize("line, why", [
    ("{not json\n", "not valid JSON"),
    ("[1, 2]\n", "not a record"),
    ('{"id": "x", "record": [1]}\n', "not a record"),
    ('{"id": 7, "record": {}}\n', "not a record"),
    (b'{"id": "x\xff", "record": {}}\n', "not UTF-8"),
    ('{"id": "x", "record": {"ppl": NaN, "nll": 1, "tokens": 8}}\n', "NaN"),
    ('{"id": "x", "record": {"ppl": Infinity, "nll": 1, "tokens": 8}}\n', "Infinity"),
    ('{"id": "x", "record": {"ppl": 1e999, "nll": 1, "tokens": 8}}\n', "not a finite number"),
    ('{"id": "x", "record": {"ppl": "2.5", "nll": 1, "tokens": 8}}\n', "not a perplexity"),
    ('{"id": "x", "record": {"ppl": 2.5, "nll": 1, "tokens": true}}\n', "not a token count"),
    ('{"id": "x", "record": {"ppl": 2.5, "nll": null, "tokens": 8}}\n', "null only with the worst"),
    ("[" * 100_000 + "\n", "nested"),
])
def test_a_damaged_cache_line_is_one_error_naming_the_file_and_line(line, why, tmp_path):
    from ropeconv.search.run import fitness_record_problem

    cache = _cache(tmp_path, fitness_record_problem)
    _write(cache, GOOD, line, GOOD)
    with pytest.raises(InputError) as caught:
        cache.get("1.0,1.5")
    message = str(caught.value)
    assert f"{cache.path}:3:" in message and why in message and "\n" not in message, message


def test_a_cache_of_other_settings_is_refused(tmp_path):
    cache = _cache(tmp_path)
    cache.path.write_text(json.dumps({"cache": {"kind": "other"}}) + "\n" + GOOD)
    with pytest.raises(InputError, match=r":1: not the settings"):
        cache.get("1.0,1.5")


def test_cache_sizes_are_capped_before_and_while_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "MAX_LINE_BYTES", 200, raising=False)
    cache = _cache(tmp_path / "line")
    _write(cache, GOOD, json.dumps({"id": "x" * 300, "record": {}}) + "\n")
    with pytest.raises(InputError, match=r":3: longer than 200 bytes"):
        cache.get("x")

    monkeypatch.setattr(cache_mod, "MAX_FILE_BYTES", 1000, raising=False)
    cache = _cache(tmp_path / "file")
    _write(cache, GOOD * 20)
    with pytest.raises(InputError, match=r"more than the 1000 a cache file may hold"):
        cache.get("1.0,1.5")

    monkeypatch.setattr(cache_mod, "MAX_ENTRIES", 2, raising=False)
    cache = _cache(tmp_path / "entries")
    _write(cache, *(json.dumps({"id": str(i), "record": {}}) + "\n" for i in range(3)))
    with pytest.raises(InputError, match=r":4: more than 2 records"):
        cache.get("0")


def test_a_cache_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    cache = _cache(tmp_path)
    os.mkfifo(cache.path)
    outcome = []

    def read():
        try:
            cache.get("x")
        except InputError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # unblock the reader this test started, then fail
        with open(cache.path, "wb"):
            pass
        pytest.fail("reading a FIFO cache blocked")
    assert outcome and "FIFO" in outcome[0], outcome


def test_a_torn_last_line_is_ignored_and_cut_off_before_the_next_append(tmp_path):
    cache = _cache(tmp_path)
    _write(cache, GOOD, GOOD[:25])  # interrupted mid-write
    assert cache.get("1.0,1.5")["ppl"] == 2.5 and len(cache.done()) == 1
    cache.add("2.0,2.0", {"ppl": 3.0, "nll": math.log(3.0), "tokens": 8})
    lines = cache.path.read_text().splitlines()
    assert lines[1:] == [GOOD.strip(), json.dumps({"id": "2.0,2.0", "record": {"nll": math.log(3.0), "ppl": 3.0,
                                                                                 "tokens": 8}}, sort_keys=True)]
    assert set(_cache(tmp_path).done()) == {"1.0,1.5", "2.0,2.0"}  # read back by a fresh run, strictly


# ------------------------------------------------------------------------------------ non-finite fitness


def test_a_fitness_that_is_not_finite_ranks_worst_and_is_cached_finite(tmp_path, monkeypatch):
    from ropeconv.search import fitness
    from ropeconv.search.run import fitness_record_problem

    monkeypatch.setattr(fitness, "token_logprobs", lambda model, ids: np.full(len(ids) - 1, np.nan))
    scorer = fitness.Scorer.__new__(fitness.Scorer)  # no real model: the log-probabilities above stand in for it
    scorer.model, scorer.text_ids, scorer.bos_id, scorer.samples = torch.nn.Module(), list(range(40)), None, 1
    record = scorer.perplexity(None, 16)
    assert record["ppl"] == evo.WORST_FITNESS and record["nll"] is None and math.isfinite(record["ppl"])
    cache = _cache(tmp_path, fitness_record_problem)
    cache.add("1.0", record)
    assert _cache(tmp_path, fitness_record_problem).get("1.0") == record  # what was cached reads back

    space = evo.SearchSpace(2, 2.0)
    seeds = {"a": np.array([1.0, 1.0]), "b": np.array([1.0, 2.0]), "c": np.array([1.5, 1.5])}
    scores = {"1.0,1.0": math.nan, "1.0,2.0": 3.0, "1.5,1.5": math.inf}
    result = evo.evolve(seeds, space, lambda f: scores.get(evo.key(f), 5.0), evo.Settings(4, 0), 0)
    assert [r.fitness for r in result.evaluated[:3]] == [evo.WORST_FITNESS, 3.0, evo.WORST_FITNESS]
    assert result.best_fitness == 3.0 and list(result.best) == [1.0, 2.0]


def test_a_search_where_no_candidate_scores_a_finite_perplexity_is_refused():
    from ropeconv.search.run import Phase, _check_found

    space = evo.SearchSpace(2, 2.0)
    diverged = evo.evolve({"a": np.array([1.0, 1.5])}, space, lambda f: math.nan, evo.Settings(4, 1), 0)
    assert diverged.best_fitness == evo.WORST_FITNESS
    with pytest.raises(InputError, match="no candidate with a finite perplexity at 512 tokens"):
        _check_found(diverged, Phase("long", 512), space)


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_a_non_finite_cached_fitness_is_refused_and_nothing_is_written(value, tiny, text, tmp_path, capsys):
    """Before: the search ranked the tampered value, wrote `Infinity` into the factors file and exited 0."""
    cache = tmp_path / "cache"
    first = tmp_path / "first" / "factors.json"
    first.parent.mkdir()
    assert search(tiny, text, first, cache) == 0
    [cache_file] = cache.glob("*.jsonl")
    lines = cache_file.read_text().splitlines()
    record = json.loads(lines[1])
    lines[1] = json.dumps(record).replace(repr(record["record"]["ppl"]), value)
    cache_file.write_text("\n".join(lines) + "\n")

    out = tmp_path / "again" / "factors.json"
    out.parent.mkdir()
    capsys.readouterr()
    rc = search(tiny, text, out, cache)
    assert_refused(capsys, rc, out, [], mentions=(f"{cache_file}:2:", value))


# ----------------------------------------------------------------------------------------------- --text


def test_a_huge_text_is_read_as_a_bounded_prefix_cut_at_a_line_end(tiny, tmp_path, monkeypatch):
    from ropeconv.search.run import SearchJob, prepare

    line = "The quick brown fox jumps over the lazy dog, ünïcödé.\n"
    big = tmp_path / "book.txt"
    big.write_text(line * (3 * limits.MIN_TEXT_BYTES // len(line)), encoding="utf-8")
    job = SearchJob(base=tiny, target_ctx=TARGET, text=big, out=tmp_path / "factors.json")
    prep = prepare(job)
    budget = limits.text_bytes(TARGET, 1)
    assert prep.text.file_bytes == big.stat().st_size > budget
    assert budget - len(line.encode()) < prep.text.bytes_read <= budget and not prep.text.complete
    assert prep.text.text.endswith("dog, ünïcödé.\n") and big.read_text().startswith(prep.text.text)
    assert listing(tmp_path) == ["book.txt"]


def test_a_prefix_without_a_line_end_is_cut_after_its_last_whole_character(tmp_path):
    from ropeconv.eval.text import read_text

    path = tmp_path / "one-line.txt"
    path.write_text("é" * 100 + "\n", encoding="utf-8")  # 2 bytes each
    assert read_text(path, 9) == read_text(path, 8)  # the 9th byte is half of the 5th é
    assert read_text(path, 9).text == "éééé" and read_text(path, 9).file_bytes == 201
    whole = read_text(path, 201)
    assert whole.complete and whole.text == "é" * 100 + "\n"


@pytest.mark.parametrize("kind, content, mentions", [
    ("fifo", None, ("FIFO",)),
    ("latin-1", "caf\xe9\n".encode("latin-1"), ("UTF-8",)),
    ("blank", b" \n\n", ("empty",)),
])
def test_a_text_that_cannot_be_read_is_one_line(kind, content, mentions, tiny, tmp_path, capsys):
    path = tmp_path / f"{kind}.txt"
    if content is None:
        os.mkfifo(path)
    else:
        path.write_bytes(content)
    out = tmp_path / "factors.json"
    before = listing(tmp_path)
    capsys.readouterr()
    rc = search(tiny, path, out, tmp_path / "cache")
    assert_refused(capsys, rc, out, before, mentions=mentions)


# ------------------------------------------------------------------------------------------- the scorer


def _scorer(base: Path, plan, placement=None):
    from ropeconv.search.fitness import Scorer

    ids = [int(x) for x in np.random.default_rng(0).integers(3, 200, TARGET)]
    return Scorer(base, plan, torch.device("cpu"), ids, None, placement=placement)


def _plans(base: Path):
    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.methods.base import ExtendRequest
    from ropeconv.methods.longrope import plan_from_factors

    scheme = load_checkpoint(base).scheme
    request = ExtendRequest(target_ctx=TARGET, original_ctx=ORIGINAL)
    ones = np.ones(scheme.n_pairs)
    return [plan_from_factors(scheme, request, ones, ones * factor) for factor in (1.0, 1.5, 2.0)]


def test_the_scorer_swaps_plans_on_gemma3_text_without_wrapping_them(tmp_path):
    """Before: every candidate installed the rotary modules again; gemma3's, which hand the sliding layers to
    the module they replaced, doubled their chain each time and ended in RecursionError."""
    base = make_tiny(tmp_path, "gemma3_text", max_position_embeddings=ORIGINAL, sliding_window_pattern=2)
    plans = _plans(base)
    scorer = _scorer(base, plans[0])
    try:
        values = [scorer.perplexity(plans[i % 3], TARGET)["ppl"] for i in range(12)]
    finally:
        scorer.close()
    assert values[:3] == values[3:6] == values[9:12] and len(set(values[:3])) == 3
    fresh = _scorer(base, plans[2])
    try:
        assert fresh.perplexity(plans[2], TARGET)["ppl"] == pytest.approx(values[2], rel=1e-9)
    finally:
        fresh.close()


def test_the_scorer_under_disk_offload_scores_as_without_it(tiny, tmp_path):
    """Before: the input ids went to the first parameter's device, the meta device once the embedding was
    offloaded to disk ("Cannot copy out of meta tensor")."""
    from ropeconv.device.placement import parse_max_memory

    plan = _plans(tiny)[1]
    placement = parse_max_memory("cpu=200KiB").beside(tmp_path / "factors.json")
    capped = _scorer(tiny, plan, placement)
    try:
        assert "disk" in capped.model.hf_device_map.values() and next(capped.model.parameters()).is_meta
        value = capped.perplexity(plan, TARGET)["ppl"]
    finally:
        capped.close()
    plain = _scorer(tiny, plan)
    try:
        assert value == pytest.approx(plain.perplexity(plan, TARGET)["ppl"], rel=1e-9)
    finally:
        plain.close()
    assert listing(tmp_path) == []  # the offload scratch is gone
