"""ropeconv eval ruler: each RULER task's generator against its definition (checked on the generated text, in a
character-count tokenizer and a real byte-level BPE), the fitting, the scorer, end to end on a tiny model (cache,
--into-card), and the real signal on SmolLM2 in llama.cpp (slow)."""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from pathlib import Path

import pytest

import ropeconv.cli.eval_ruler as eval_ruler  # registers `eval ruler` on the eval group
from ropeconv.cli.main import cli
from ropeconv.eval import ruler
from ropeconv.eval import runtimes as rt
from ropeconv.manifest import changed_files, load_manifest, sha256_file
from tests.conftest import add_byte_level_tokenizer, make_tiny, run_cli

cli.add_command(eval_ruler.eval_group)  # as test_eval.py does: the tests stand alone

WORK = Path(os.environ.get("ROPECONV_WORK", Path(__file__).resolve().parents[2] / "work"))
NIAH_TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery")


@pytest.fixture(scope="module", params=["chars", "bpe"])
def count_tokens(request, tmp_path_factory):
    """len(text) // 4, or a real byte-level BPE tokenizer (ropeconv.fixtures.tokenizers)."""
    if request.param == "chars":
        return lambda text: len(text) // 4
    from tokenizers import Tokenizer

    from ropeconv.fixtures.tokenizers import add_byte_level_bpe

    directory = add_byte_level_bpe(tmp_path_factory.mktemp("bpe"))
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    return lambda text: len(tok.encode(text).ids)


LENGTHS = (1800, 3000)


def _fit(task, count_tokens, length, trial=0, seed=0):
    sample, n = ruler.fit(task, count_tokens, length, ruler.trial_seed(seed, task, length, trial))
    return sample, n


# ------------------------------------------------------------------------------------------ niah


@pytest.mark.parametrize("task", NIAH_TASKS)
@pytest.mark.parametrize("length", LENGTHS)
def test_niah_needles_sit_where_stated_once_each(task, length, count_tokens):
    num_k, num_v, num_q = ruler.NIAH[task]
    sample, _ = _fit(task, count_tokens, length)
    text = sample.text
    singular = num_v * num_q == 1
    head = ("A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you "
            "about the number afterwards.\n") if singular else \
        ("Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz "
         "you about the numbers afterwards.\n")
    assert text.startswith(head)
    question, _, prefix = text[len(head):].rpartition("\n")
    context = question
    queried = sample.details["queried"]
    query = ", ".join(queried[:-1]) + ", and " + queried[-1] if len(queried) > 1 else queried[0]
    if singular:
        assert prefix == (f"What is the special magic number for {query} mentioned in the provided text? The special "
                          f"magic number for {query} mentioned in the provided text is")
    else:
        assert prefix == (f"What are all the special magic numbers for {query} mentioned in the provided text? The "
                          f"special magic numbers for {query} mentioned in the provided text are")

    # the context: noise sentences, and each needle on its own line, exactly once, where details say
    lines = context.split("\n")
    needle = re.compile(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d{7})\.")
    found = {i: line for i, line in enumerate(lines) if line != ruler.NOISE}
    assert found == sample.details["needles"]
    assert len(found) == num_k * num_v and lines.count(ruler.NOISE) == sample.units
    pairs = [needle.fullmatch(line).groups() for line in found.values()]
    for line in found.values():
        assert text.count(line) == 1
    keys = {k for k, _ in pairs}
    assert len(keys) == num_k and len({v for _, v in pairs}) == num_k * num_v
    # the answers are the values of the queried keys, read off the text
    expected = [v for q in queried for k, v in pairs if k == q]
    assert sorted(sample.answers) == sorted(expected) and len(expected) == num_v * num_q
    for answer in sample.answers:
        assert text.count(answer) == 1
    if task == "niah_multikey":
        distractors = keys - set(queried)
        assert len(distractors) == 3 and queried[0] not in distractors
        assert all(d not in prefix for d in distractors)
    if task == "niah_multiquery":
        assert set(queried) == keys


def test_needle_depths_vary_across_trials():
    depths = []
    for trial in range(40):
        sample, _ = _fit("niah_single", lambda t: len(t) // 4, 4096, trial)
        [(line, _)] = sample.details["needles"].items()
        depths.append(line / (sample.units + 1))
    assert min(depths) < 0.2 and max(depths) > 0.8  # uniform over the haystack, not one place


# -------------------------------------------------------------------------------------------- vt


def _resolve(text: str) -> dict[str, str]:
    """Every VAR's value, following `VAR X = VAR Y` to the number (written independently of the generator)."""
    assigned = dict(re.findall(r"VAR ([A-Z]+) = (\d+|VAR [A-Z]+)", text))
    values = {}
    for name in assigned:
        seen, cur = set(), name
        while assigned[cur].startswith("VAR "):
            assert cur not in seen, "a cycle"
            seen.add(cur)
            cur = assigned[cur][4:]
        values[name] = assigned[cur]
    return values


@pytest.mark.parametrize("length", LENGTHS)
def test_vt_chain_resolves_to_the_stated_answer(length, count_tokens):
    sample, _ = _fit("vt", count_tokens, length)
    text = sample.text
    query = re.findall(r"assigned the value (\d+) in the text above", text)[-1]
    values = _resolve(text)
    holders = {name for name, value in values.items() if value == query}
    assert holders == set(sample.answers) and len(holders) == ruler.VT_HOPS + 1
    assert all(re.fullmatch(r"[A-Z]{5}", n) for n in holders)
    assert text.endswith(f"{ruler.VT_HOPS + 1} variables are assgined the value {query}, they are: ")
    # the one solved example: its own chain, another value, its answer written out
    example_value = re.findall(r"assigned the value (\d+) in the text above", text)[0]
    assert example_value != query
    example = {n for n, v in values.items() if v == example_value}
    assert len(example) == 5 and f"they are: {' '.join(sample.details['example_names'])}\n\n" in text
    assert set(sample.details["example_names"]) == example
    # each statement once; the chain in order within the question's context
    question = text[text.index("\n\nMemorize"):]
    order = [question.index(f"VAR {n} = ") for n in sample.details["names"]]
    assert order == sorted(order) and all(text.count(f"VAR {n} = ") == 1 for n in holders)
    assert question.count(ruler.NOISE) == sample.units


# ------------------------------------------------------------------------------------------- cwe


def _question_list(text: str) -> list[str]:
    """The numbered list the question is about (the last one), parsed from the text; numbering checked."""
    header = "Memorize the ones that appear most often.\n"
    body = text[text.rindex(header) + len(header):text.rindex("\nQuestion: What are the 10 most common words")]
    entries = re.findall(r"(\d+)\. ([a-z]+)", body)
    assert [int(i) for i, _ in entries] == list(range(1, len(entries) + 1))
    assert " ".join(f"{i}. {w}" for i, w in entries) == body
    return [w for _, w in entries]


@pytest.mark.parametrize("length", LENGTHS)
def test_cwe_word_counts_give_the_stated_top_ten(length, count_tokens):
    _check_cwe(length, count_tokens)


def test_cwe_long_list_word_counts_give_the_stated_top_ten():
    """The long list's frequencies (30 and 3, from CWE_SHORT tokens on), with the character tokenizer (fast)."""
    assert 5000 >= ruler.CWE_SHORT
    _check_cwe(5000, lambda text: len(text) // 4)


def _check_cwe(length: int, count_tokens) -> None:
    sample, _ = _fit("cwe", count_tokens, length)
    counts = Counter(_question_list(sample.text))
    common_freq, rare_freq = (30, 3) if length >= ruler.CWE_SHORT else (6, 1)
    top = [w for w, _ in counts.most_common(10)]
    assert set(top) == set(sample.answers) and len(sample.answers) == 10
    assert {counts[w] for w in top} == {common_freq}
    rest = [c for w, c in counts.items() if w not in top]
    assert rest and set(rest) == {rare_freq} and len(rest) == sample.units
    # the example before it is solved with its own words
    example = sample.text[:sample.text.index("\nBelow is a numbered list")]
    listed = re.findall(r"\d+\. ([a-z]+)", example.split("Question:")[0])
    solved = re.findall(r"\d+\. ([a-z]+)", example.split("are:")[-1])
    assert [w for w, _ in Counter(listed).most_common(10)] and set(solved) == \
        {w for w, _ in Counter(listed).most_common(10)}
    assert not set(solved) & set(counts)


# ------------------------------------------------------------------------------------------- fwe


@pytest.mark.parametrize("length", LENGTHS)
def test_fwe_word_counts_give_the_stated_top_three(length, count_tokens):
    sample, _ = _fit("fwe", count_tokens, length)
    text = sample.text
    start = text.index("Find the three most frequently appeared coded words. ") + \
        len("Find the three most frequently appeared coded words. ")
    words = text[start:text.index("\nQuestion: Do not provide")].split(" ")
    counts = Counter(words)
    assert counts.most_common(1)[0][0] == "..."  # rank 1 is the noise
    del counts["..."]
    ranked = counts.most_common()
    assert {w for w, _ in ranked[:3]} == set(sample.answers)
    assert ranked[2][1] > ranked[3][1]  # no tie for the third
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in counts)
    # the counts follow Zeta(2): rank k appears int(N k^-2 / zeta(2)) times
    n = sample.units
    assert sorted(counts.values(), reverse=True)[:3] == [int(n * k**-2 / ruler.ZETA_2) for k in (2, 3, 4)]


# --------------------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("task", ruler.TASKS)
def test_fitted_prompts_lie_within_the_tolerance_and_reproduce(task, count_tokens):
    for length in LENGTHS:
        sample, n = _fit(task, count_tokens, length)
        target = ruler.budget(task, length)
        tol = ruler.tolerance(target, count_tokens(ruler.unit_text(task, length)))
        assert n == count_tokens(sample.text)
        assert 0 <= target - n <= tol, (task, length, n, target, tol)
        # one more unit of haystack would not fit (the largest was found)
        assert count_tokens(ruler.make(task, ruler.trial_seed(0, task, length, 0), sample.units + 1,
                                       length).text) > target
        again, _ = _fit(task, count_tokens, length)
        assert again.text == sample.text and again.answers == sample.answers
        other, _ = _fit(task, count_tokens, length, trial=1)
        assert other.text != sample.text
        assert _fit(task, count_tokens, length, seed=1)[0].text != sample.text


def test_the_template_alone_too_long_is_one_line():
    from ropeconv.errors import InputError

    with pytest.raises(InputError, match="ruler vt at 200 tokens, prompt length 170: the template alone"):
        ruler.fit("vt", lambda t: len(t) // 4, 200, "s")
    with pytest.raises(InputError, match="shorter than the 128 tokens"):
        ruler.fit("niah_single", lambda t: len(t) // 4, 100, "s")


# --------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("prediction, references, score", [
    (" 1234567, 7654321, 1111111 and 2222222.", ["1234567", "7654321", "1111111", "2222222"], 1.0),
    (" 1234567 and 7654321", ["1234567", "7654321", "1111111", "2222222"], 0.5),
    (" I do not know.", ["1234567"], 0.0),
    ("", ["ABCDE", "FGHIJ"], 0.0),
    (" abcde fghij klmno", ["ABCDE", "FGHIJ", "KLMNO", "PQRST", "UVWXY"], 0.6),  # case-insensitive
    (" 1. Meziga 2. LOKUKI", ["meziga", "lokuki", "dinako"], 2 / 3),
    ("\x00brgmqi\tvgtfvy", ["brgmqi", "vgtfvy", "anclrg"], 2 / 3),  # control characters become newlines
    (" 123456", ["1234567"], 0.0),  # a reference must be contained whole
])
def test_string_match_all(prediction, references, score):
    assert ruler.string_match_all(prediction, references) == pytest.approx(score)


def test_summary_averages_tasks_per_length():
    records = [{"task": "vt", "length": 100, "score": 1.0, "tokens": 90},
               {"task": "vt", "length": 100, "score": 0.0, "tokens": 90},
               {"task": "fwe", "length": 100, "score": 1 / 3, "tokens": 80}]
    s = ruler.summarize(records, ["vt", "fwe"], [100, 200])
    cells = {(c["task"], c["length"]): c for c in s["per_task_length"]}
    assert cells["vt", 100]["score"] == 0.5 and cells["vt", 100]["trials"] == 2 and cells["fwe", 200]["score"] is None
    assert s["per_length"][0]["score"] == pytest.approx((0.5 + 1 / 3) / 2) and s["per_length"][1]["score"] is None
    assert s["average"] == pytest.approx((0.5 + 1 / 3) / 2)


def test_parse_tasks():
    from ropeconv.errors import InputError

    assert ruler.parse_tasks("all") == list(ruler.TASKS)
    assert ruler.parse_tasks("vt, niah_single") == ["niah_single", "vt"]
    with pytest.raises(InputError, match="--tasks"):
        ruler.parse_tasks("niah_single,qa_1")


def test_card_section_replaces_only_its_own():
    card = "# Model\n\nintro\n\n## RULER\n\nold table\n\n## Parity\n\nproof\n"
    new = eval_ruler.replace_section(card, "## RULER\n\nnew table\n")
    assert new == "# Model\n\nintro\n\n## RULER\n\nnew table\n\n## Parity\n\nproof\n"
    assert eval_ruler.replace_section("# Model\n\nintro\n", "## RULER\n\nt\n") == "# Model\n\nintro\n\n## RULER\n\nt\n"
    last = "# M\n\n## RULER\n\nold\n"
    assert eval_ruler.replace_section(last, "## RULER\n\nnew\n") == "# M\n\n## RULER\n\nnew\n"


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_output(tmp_path_factory):
    """A tiny llama with a byte-level BPE, as a ropeconv output (a card and a manifest listing it)."""
    root = tmp_path_factory.mktemp("ruler")
    base = add_byte_level_tokenizer(make_tiny(root, "llama"))
    out = root / "out"
    assert run_cli("extend", base, "--method", "none", "--no-verify", "-q", "-o", out) == 0
    return out


def test_ruler_end_to_end_cache_and_card(tiny_output, tmp_path, capsys, monkeypatch):
    out = tiny_output
    results = tmp_path / "res"
    card_before = (out / "README.md").read_text()
    calls = []
    original = rt.HFRuntime.generate
    monkeypatch.setattr(rt.HFRuntime, "generate", lambda self, ids, n: calls.append(n) or original(self, ids, n))
    args = ["eval", "ruler", out, "--lengths", "1700,2000", "--trials", "1", "--seed", "2", "-o", results,
            "--into-card", out]
    assert run_cli(*args) == 0
    captured = capsys.readouterr()
    assert len(calls) == 14 and sorted(set(calls)) == [30, 50, 120, 128]
    doc = json.loads((results / "ruler.json").read_text())
    assert doc["kind"] == "ruler" and doc["settings"]["tasks"] == list(ruler.TASKS)
    cells = {(c["task"], c["length"]) for c in doc["summary"]["per_task_length"] if c["trials"] == 1}
    assert cells == {(t, L) for t in ruler.TASKS for L in (1700, 2000)}
    for r in doc["trials"]:
        assert r["score"] == ruler.string_match_all(r["output"], r["answers"])
        assert 0 <= r["budget"] - r["tokens"] and r["budget"] == r["length"] - ruler.MAX_NEW_TOKENS[r["task"]]
    assert (results / "ruler.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for task in ruler.TASKS:
        assert task in captured.out
    assert "average" in captured.out

    # the card: the section written, the rest kept, the manifest consistent
    card = (out / "README.md").read_text()
    assert card.startswith(card_before.rstrip("\n")) and card.count("## RULER") == 1
    assert "| niah_single |" in card and "| **average** |" in card
    manifest = load_manifest(out)
    assert manifest.files["README.md"].sha256 == sha256_file(out / "README.md")
    assert changed_files(manifest) == []
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging left
    assert run_cli("verify", out, "--tokens", "64") == 0

    # rerun: every trial from the cache (no generate call); the card's section replaced, not added
    calls.clear()
    capsys.readouterr()
    assert run_cli(*args[:-2], "--into-card", out, "--tasks", "all") == 0
    assert calls == [] and "14 from the cache" in capsys.readouterr().err
    assert json.loads((results / "ruler.json").read_text())["trials"] == doc["trials"]
    assert (out / "README.md").read_text().count("## RULER") == 1
    assert changed_files(load_manifest(out)) == []


def test_into_card_refuses_an_edited_card_before_any_work(tiny_output, tmp_path, capsys, monkeypatch):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_output, out)
    monkeypatch.setattr(rt, "open_runtime", lambda *a, **k: pytest.fail("ran before refusing"))
    capsys.readouterr()
    # results inside the output whose card is written: its manifest would not list them
    assert run_cli("eval", "ruler", tiny_output, "--lengths", "2k", "-o", out / "eval", "--into-card", out) == 2
    assert "lies inside the --into-card output" in capsys.readouterr().err and not (out / "eval").exists()
    (out / "README.md").write_text((out / "README.md").read_text() + "\nmy notes\n")
    assert run_cli("eval", "ruler", out, "--lengths", "2k", "--into-card", out) == 2
    err = capsys.readouterr().err
    assert "README.md differs from what manifest.json records" in err and err.count("\n") == 1
    assert run_cli("eval", "ruler", out, "--lengths", "2k", "--into-card", tmp_path) == 2
    assert "manifest.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- the real signal

# past SmolLM2's 8192 positions: at 9k the unscaled base still finds the needle (2/2 here, seed 0); at 12k it scored
# 0/2 against YaRN ×4's 1/2, a margin of one trial. At 16k, twice its context, the base has collapsed
# (bench.ruler_bench, trial 0: " is is is …" on niah_single and niah_multikey, blank lines on fwe, 0 % on all four
# tasks run) while YaRN ×4 retrieved both needles (100 %).
SMOL_LENGTH = 16 * 1024
SMOL_TRIALS = 2


@pytest.mark.long
def test_smollm2_yarn_x4_beats_the_unscaled_base_past_its_context(tmp_path, capsys):
    """niah_single at 16k tokens in llama.cpp: the unscaled base (twice its 8k context) retrieves nothing, and the
    YaRN ×4 conversion make demo writes retrieves at least one of two needles. Both Q8_0, both converted here from
    the SmolLM2 fixture. Four 16k-token prefills: ~15 min on 2 idle cores, so `make test-long` runs it, not
    `make test` (pytest -m "not long")."""
    from ropeconv.fixtures import smollm2

    base = smollm2.materialize_hf(WORK / "smollm2-135m")
    unscaled, yarn = tmp_path / "unscaled", tmp_path / "yarn"
    assert run_cli("extend", base, "--method", "none", "--to", "gguf", "--outtype", "q8_0", "--no-verify", "-q",
                   "-o", unscaled) == 0
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype", "q8_0",
                   "--no-verify", "-q", "-o", yarn) == 0
    ggufs = sorted(yarn.glob("*.gguf"))
    scores = {}
    for name, model in (("unscaled", next(unscaled.glob("*.gguf"))), ("yarn-x4", ggufs[0])):
        started = time.monotonic()
        capsys.readouterr()
        assert run_cli("eval", "ruler", model, "--lengths", str(SMOL_LENGTH), "--tasks", "niah_single", "--trials",
                       str(SMOL_TRIALS), "--cache-dir", tmp_path / "cache", "--json", "-q") == 0
        doc = json.loads(capsys.readouterr().out)
        scores[name] = doc["summary"]["average"]
        print(f"{name}: niah_single at {SMOL_LENGTH}: {scores[name]:.0%} "
              f"{[r['output'][:40] for r in doc['trials']]} ({time.monotonic() - started:.0f} s)")
    assert scores["unscaled"] == 0 and scores["yarn-x4"] >= 0.5, scores
