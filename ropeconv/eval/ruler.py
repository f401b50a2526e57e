"""RULER's synthetic tasks (Hsieh et al. 2024, "RULER: What's the Real Context Size of Your Long-Context Language
Models?", https://github.com/NVIDIA/RULER), generated here from a seed, fitted to a token length, and scored.

Pure: no runtime, no torch. A task's prompt is a function of (trial seed, units): `units` is what grows the
haystack (noise sentences for niah and vt, distinct words for cwe and fwe), bisected by `fit` to the largest count
whose prompt fits the budget in the runtime's own tokenizer (passkey.largest_fitting). Every random draw that does
not depend on `units` (keys, values, variable names, vocabularies) comes from Random(trial seed), the layout
(where needles and chains go, the shuffles) from Random(trial seed, units): a prompt is the same for the same
(seed, task, length, trial) whatever else is in the sweep.

Tasks (RULER's scripts/data/synthetic/{niah,variable_tracking,common_words_extraction,freq_words_extraction}.py,
parameters from its synthetic.yaml, templates and answer prefixes from its constants.py, verbatim):

=================  ================================================================  ===============
task               definition                                                        max_new_tokens
=================  ================================================================  ===============
niah_single        niah_single_1: 1 key (word), 1 value (7 digits), 1 query              128
niah_multikey      niah_multikey_1: 4 keys, 1 value each, 1 of the keys queried          128
niah_multivalue    niah_multivalue: 1 key with 4 values, all asked                       128
niah_multiquery    niah_multiquery: 4 keys, 1 value each, all 4 queried                  128
vt                 1 chain of 4 hops: VAR A = 12345, VAR B = VAR A , …; all 5 names       30
cwe                numbered list: 10 words × 30, the rest × 3 (6 / 1 below 4096          120
                   tokens), with one solved example; the 10 common words
fwe                coded words (6 letters) drawn from Zeta(α=2), rank 1 is '...';         50
                   the words of ranks 2–4
=================  ================================================================  ===============

A sequence length L holds the prompt and the answer, as in RULER: the prompt (template + answer prefix, the model
continues it) is fitted to L − max_new_tokens, within `tolerance` tokens below. Scoring is RULER's
string_match_all for every task: the fraction of the references found in the prediction, case-insensitively
(control characters turned into newlines first, RULER's postprocess_pred).

Deviations from RULER, all in where the words come from and none in the templates:
* no word lists are downloaded: niah keys are "adjective-noun" pairs as RULER's (wonderwords' lists) but from a
  small built-in list (ADJECTIVES × NOUNS); cwe's words are pronounceable six-letter pseudo-words (consonant-vowel
  syllables) drawn from the trial seed instead of wonderwords' English nouns, adjectives and verbs (all of one
  length, so none is a substring of another and string_match_all cannot credit a word for a longer one);
* the multi-key, multi-value and multi-query niah variants use the noise haystack (RULER: Paul Graham's essays,
  a download); needles go between noise sentences at positions drawn uniformly, as RULER places them in noise;
* vt's in-context example is one chain of 4 hops with three-letter names in 5 noise sentences (RULER fits its
  example to 500 tokens);
* the haystack is bisected (RULER steps it by a fixed increment), so prompts are as long as the budget allows.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ropeconv.errors import InputError
from ropeconv.eval import passkey as pk
from ropeconv.eval.cache import number, whole

TEMPLATE = "ruler-v1"  # bump when a template, a generator or the fitting rule changes (part of the cache key)
TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")
# RULER's constants.py tokens_to_generate, per task family
MAX_NEW_TOKENS = {"niah_single": 128, "niah_multikey": 128, "niah_multivalue": 128, "niah_multiquery": 128,
                  "vt": 30, "cwe": 120, "fwe": 50}

# RULER niah.py: the "noise" haystack, one sentence repeated (vt's noise is the same sentence)
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# ------------------------------------------------------------------------------------------ niah

# RULER constants.py TASKS['niah'] (template and answer_prefix) and niah.py's needle, verbatim
NIAH_TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
                 "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?")
NIAH_ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NIAH_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
TYPE_NEEDLE_V = "numbers"
# synthetic.yaml: (num_needle_k, num_needle_v, num_needle_q)
NIAH = {"niah_single": (1, 1, 1), "niah_multikey": (4, 1, 1), "niah_multivalue": (1, 4, 1),
        "niah_multiquery": (4, 1, 4)}

# keys: RULER joins wonderwords' adjectives and nouns ("adj-noun"); a built-in list here (see the module docstring)
ADJECTIVES = ("abiding", "agile", "ancient", "brave", "bright", "calm", "clever", "cozy", "curious", "daring",
              "eager", "elegant", "fancy", "fierce", "gentle", "giant", "glossy", "golden", "happy", "humble",
              "icy", "jolly", "keen", "lively", "lucky", "mellow", "misty", "noble", "odd", "polite", "proud",
              "quiet", "rapid", "rustic", "shiny", "silent", "sleepy", "snowy", "tidy", "vivid", "wary", "witty")
NOUNS = ("anchor", "badger", "banjo", "beacon", "bison", "candle", "canyon", "cherry", "comet", "cricket", "dolphin",
         "ember", "falcon", "fern", "garden", "glacier", "harbor", "hedgehog", "island", "jigsaw", "kettle",
         "lantern", "lemur", "maple", "meadow", "octopus", "orchid", "otter", "pebble", "pepper", "quartz", "raven",
         "saddle", "shovel", "spruce", "teapot", "thistle", "tulip", "valley", "walnut", "willow", "zebra")


def _niah_key(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _number(rng: random.Random, digits: int = 7) -> str:
    """RULER's generate_random_number: uniform over the numbers of `digits` digits."""
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def _distinct(draw: Callable[[], str], n: int, avoid: Sequence[str] = ()) -> list[str]:
    out: list[str] = []
    seen = set(avoid)
    while len(out) < n:
        item = draw()
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _niah_template(num_v: int, num_q: int) -> tuple[str, str]:
    """RULER niah.py: one needle value asked (num_needle_q · num_needle_v == 1) makes the template singular, by its
    own string replacements over template + answer prefix (TEMPLATE holds both there)."""
    template, type_needle_v = NIAH_TEMPLATE + NIAH_ANSWER_PREFIX, TYPE_NEEDLE_V
    if num_q * num_v == 1:
        template = template.replace("Some", "A").replace("are all", "is").replace("are", "is")
        template = template.replace("answers", "answer")
        type_needle_v = type_needle_v[:-1]
    return template, type_needle_v


@dataclass(frozen=True)
class Sample:
    task: str
    text: str  # the whole prompt: template + answer prefix, which the model continues
    answers: tuple[str, ...]  # the references string_match_all looks for
    units: int  # haystack sentences (niah, vt), uncommon words (cwe), words drawn (fwe)
    details: dict = field(default_factory=dict)  # what the generator placed, for the tests and the record


def niah(seed: str, units: int, num_k: int, num_v: int, num_q: int, task: str = "niah") -> Sample:
    """RULER niah.py with the noise haystack: `units` noise sentences joined by newlines, the needles inserted at
    distinct random sentence positions; the query names num_q of the num_k keys, the answers are all their values.

    details: keys, values (per key), queried (the keys asked), needles (line index in the context → needle)."""
    rng = random.Random(seed)
    keys = _distinct(lambda: _niah_key(rng), num_k)
    drawn = _distinct(lambda: _number(rng), num_k * num_v)
    values = [drawn[i * num_v:(i + 1) * num_v] for i in range(num_k)]
    needles = [NIAH_NEEDLE.format(type_needle_v=TYPE_NEEDLE_V, key=k, value=v) for k, vs in zip(keys, values)
               for v in vs]
    rng.shuffle(needles)
    queried = rng.sample(range(num_k), num_q)

    layout = random.Random(f"{seed}:{units}")
    sentences = [NOISE] * units
    for index, needle in zip(sorted(layout.sample(range(max(units, len(needles))), len(needles)), reverse=True),
                             needles):
        sentences.insert(index, needle)
    context = "\n".join(sentences)

    queries = [keys[i] for i in queried]
    answers = [a for i in queried for a in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, type_needle_v = _niah_template(num_v, num_q)
    text = template.format(type_needle_v=type_needle_v, context=context, query=query)
    where = {i: line for i, line in enumerate(sentences) if line != NOISE}
    return Sample(task, text, tuple(answers), units,
                  {"keys": keys, "values": values, "queried": queries, "needles": where, "context": context})


def niah_single(seed: str, units: int) -> Sample:
    return niah(seed, units, *NIAH["niah_single"], task="niah_single")


def niah_multikey(seed: str, units: int) -> Sample:
    return niah(seed, units, *NIAH["niah_multikey"], task="niah_multikey")


def niah_multivalue(seed: str, units: int) -> Sample:
    return niah(seed, units, *NIAH["niah_multivalue"], task="niah_multivalue")


def niah_multiquery(seed: str, units: int) -> Sample:
    return niah(seed, units, *NIAH["niah_multiquery"], task="niah_multiquery")


# -------------------------------------------------------------------------------------------- vt

# RULER constants.py TASKS['variable_tracking'], verbatim (its "assgined" included)
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
VT_ANSWER_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
                    "are assgined the value {query}, they are: ")
VT_HOPS, VT_CHAINS = 4, 1  # synthetic.yaml: variable_tracking num_chains 1, num_hops 4
VT_EXAMPLE_NOISE = 5  # noise sentences in the in-context example


def _vt_chain(rng: random.Random, hops: int, letters: int, avoid_value: int | None = None):
    """RULER variable_tracking.py generate_chains: hops + 1 distinct upper-case names, a 5-digit value."""
    names = _distinct(lambda: "".join(rng.choices(string.ascii_uppercase, k=letters)), hops + 1)
    value = rng.randint(10000, 99999)
    while value == avoid_value:
        value = rng.randint(10000, 99999)
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]
    return names, value, chain


def _vt_text(chain: list[str], names: list[str], value: int, noises: int, layout: random.Random) -> str:
    """RULER variable_tracking.py generate_input_output: noise lines (each ending in a newline) joined by newlines,
    the chain's statements inserted in order at random positions."""
    sentences = [NOISE + "\n"] * noises
    positions = sorted(layout.sample(range(max(noises, len(chain))), len(chain)))
    for position, j in zip(positions, range(len(chain))):
        sentences.insert(position + j, chain[j])
    context = "\n".join(sentences).replace(". \n", ".\n")
    return (VT_TEMPLATE + VT_ANSWER_PREFIX).format(context=context, query=value, num_v=len(names))


def vt(seed: str, units: int) -> Sample:
    """Variable tracking: one chain of VT_HOPS hops in `units` noise sentences, after one solved example (a chain of
    three-letter names, another value); the answers are every name the value reaches.

    details: names (the chain's, in order), value, example_names, example_value."""
    rng = random.Random(seed)
    names, value, chain = _vt_chain(rng, VT_HOPS, 5)
    ex_names, ex_value, ex_chain = _vt_chain(rng, VT_HOPS, 3, avoid_value=value)
    example = _vt_text(ex_chain, ex_names, ex_value, VT_EXAMPLE_NOISE, random.Random(f"{seed}:example"))
    example += " ".join(ex_names)
    text = example + "\n\n" + _vt_text(chain, names, value, units, random.Random(f"{seed}:{units}"))
    return Sample("vt", text, tuple(names), units, {"names": names, "value": value, "example_names": ex_names,
                                                     "example_value": ex_value})


# ------------------------------------------------------------------------------------------- cwe

# RULER constants.py TASKS['common_words_extraction'], verbatim
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
                "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above "
                "list?")
CWE_ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
CWE_COMMON = 10  # synthetic.yaml: num_cw 10, freq_cw 30, freq_ucw 3
CWE_SHORT = 4096  # below this sequence length RULER repeats 6 / 1 times (its example: 3 / 1 of 20 words)
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"


def cwe_frequencies(length: int) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """((words, common repeats, uncommon repeats) of the example, (common repeats, uncommon repeats) of the
    question) — RULER common_words_extraction.py generate_input_output."""
    if length < CWE_SHORT:
        return (20, 3, 1), (6, 1)
    return (40, 10, 3), (30, 3)


def _pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(3))


def _cwe_list(words: list[str], common: int, uncommon: int, shuffle: random.Random) -> str:
    """RULER get_example: the first CWE_COMMON words `common` times, the rest `uncommon` times, shuffled,
    written "1. word 2. word …"."""
    listed = words[:CWE_COMMON] * common + words[CWE_COMMON:] * uncommon
    shuffle.shuffle(listed)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed))


def cwe(seed: str, units: int, length: int) -> Sample:
    """Common words: a solved example list, then the question's list of CWE_COMMON + units distinct words, the
    CWE_COMMON common ones repeated freq_cw times and the `units` others freq_ucw times (cwe_frequencies(length)).

    details: common (the answers), words (all, common first), freq (common, uncommon repeats), list (the
    question's numbered list)."""
    (ex_n, ex_common, ex_uncommon), (freq_cw, freq_ucw) = cwe_frequencies(length)
    rng = random.Random(seed)
    example_words = _distinct(lambda: _pseudo_word(rng), ex_n)
    words = _distinct(lambda: _pseudo_word(rng), CWE_COMMON + units, avoid=example_words)
    template = CWE_TEMPLATE + CWE_ANSWER_PREFIX
    example = template.format(context=_cwe_list(example_words, ex_common, ex_uncommon,
                                                random.Random(f"{seed}:example")), query="")
    example += " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(example_words[:CWE_COMMON]))
    listed = _cwe_list(words, freq_cw, freq_ucw, random.Random(f"{seed}:{units}"))
    text = example + "\n" + template.format(context=listed, query="")
    common = words[:CWE_COMMON]
    return Sample("cwe", text, tuple(common), units,
                  {"common": common, "words": words, "freq": (freq_cw, freq_ucw), "list": listed})


# ------------------------------------------------------------------------------------------- fwe

# RULER constants.py TASKS['freq_words_extraction'], verbatim
FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
                "the dots '....'. What are the three most frequently appeared words in the above coded text?")
FWE_ANSWER_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
FWE_ALPHA, FWE_VOCAB, FWE_WORDLEN = 2.0, 2000, 6  # synthetic.yaml alpha 2.0; freq_words_extraction.py defaults
ZETA_2 = math.pi**2 / 6  # scipy.special.zeta(2.0)


def fwe_counts(units: int) -> list[int]:
    """How often each rank k = 1 … FWE_VOCAB is written: int(units · k^−α / ζ(α)) (RULER gen_text)."""
    return [int(units * k**-FWE_ALPHA / ZETA_2) for k in range(1, FWE_VOCAB + 1)]


def fwe(seed: str, units: int) -> Sample:
    """Frequent words: a vocabulary of FWE_VOCAB random six-letter words, rank 1 replaced by '...' (noise), each
    rank written fwe_counts(units)[k] times, shuffled, joined by spaces; the answers are ranks 2–4.

    details: vocab (by rank), counts."""
    rng = random.Random(seed)
    vocab = _distinct(lambda: "".join(rng.choices(string.ascii_lowercase, k=FWE_WORDLEN)), FWE_VOCAB)
    vocab.sort()
    rng.shuffle(vocab)
    vocab[0] = "..."  # RULER: "treat the top ranked as noise"
    counts = fwe_counts(units)
    words = [w for w, c in zip(vocab, counts) for _ in range(c)]
    random.Random(f"{seed}:{units}").shuffle(words)
    text = (FWE_TEMPLATE + FWE_ANSWER_PREFIX).format(context=" ".join(words), query="")
    return Sample("fwe", text, tuple(vocab[1:4]), units, {"vocab": vocab, "counts": counts})


# -------------------------------------------------------------------------------------- fitting

GENERATORS: dict[str, Callable[[str, int, int], Sample]] = {
    "niah_single": lambda seed, units, length: niah_single(seed, units),
    "niah_multikey": lambda seed, units, length: niah_multikey(seed, units),
    "niah_multivalue": lambda seed, units, length: niah_multivalue(seed, units),
    "niah_multiquery": lambda seed, units, length: niah_multiquery(seed, units),
    "vt": lambda seed, units, length: vt(seed, units),
    "cwe": cwe,
    "fwe": lambda seed, units, length: fwe(seed, units),
}


def make(task: str, seed: str, units: int, length: int) -> Sample:
    """The task's prompt for a trial seed, `units` of haystack, at sequence length `length` (cwe's repeats)."""
    return GENERATORS[task](seed, units, length)


def unit_text(task: str, length: int) -> str:
    """About what one more unit adds to a prompt: the fitting's first guess and its tolerance are counted on it."""
    if task == "cwe":
        return " ".join(["9999. bakoti"] * max(1, cwe_frequencies(length)[1][1]))
    if task == "fwe":
        return "abcdef ghijkl"  # one word more (or two, as the floors of the Zeta counts move)
    return NOISE + "\n"


def budget(task: str, length: int) -> int:
    """The prompt's share of a sequence length: RULER keeps max_new_tokens of it for the answer."""
    return length - MAX_NEW_TOKENS[task]


def tolerance(length: int, unit_tokens: int) -> int:
    """How far below its budget a fitted prompt may fall: passkey's max(8, 0.5 %), or two haystack units (a noise
    sentence, a word and its repeats) when more — the haystack grows by whole units, not characters."""
    return max(pk.tolerance(length), 2 * unit_tokens)


def fit(task: str, count_tokens: Callable[[str], int], length: int, seed: str) -> tuple[Sample, int]:
    """The trial's prompt with the most haystack whose token count ≤ budget(task, length), and that count."""
    target = budget(task, length)
    if target < 1:
        raise InputError(f"ruler {task} length {length}: shorter than the {MAX_NEW_TOKENS[task]} tokens kept for "
                         "the answer")
    unit = max(1, count_tokens(unit_text(task, length)))
    units, n = pk.largest_fitting(count_tokens, lambda u: make(task, seed, u, length).text, target,
                                  first=lambda n0: (target - n0) // unit, limit=64 * target + 1000,
                                  tolerance=tolerance(target, unit), what=f"ruler {task} at {length} tokens, prompt")
    return make(task, seed, units, length), n


def trial_seed(seed: int, task: str, length: int, trial: int) -> str:
    """Random's str seeds hash with sha512 (version 2): stable across runs and platforms."""
    return f"ropeconv-ruler:{seed}:{task}:{length}:{trial}"


# -------------------------------------------------------------------------------------- scoring

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    """RULER postprocess_pred: control characters become newlines, the ends stripped."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """RULER's metric for the synthetic tasks: the fraction of the references that occur in the prediction,
    case-insensitively (RULER reports it × 100)."""
    text = postprocess(prediction).lower()
    return sum(r.lower() in text for r in references) / len(references)


# ---------------------------------------------------------------------------------------- trials


@dataclass(frozen=True)
class TrialSpec:
    task: str
    length: int
    trial: int

    @property
    def id(self) -> str:
        return f"{self.length}:{self.trial}"  # the cache is one file per task


def trial_specs(tasks: Sequence[str], lengths: Sequence[int], trials: int) -> list[TrialSpec]:
    return [TrialSpec(task, L, t) for task in tasks for L in lengths for t in range(trials)]


def run_trial(runtime, spec: TrialSpec, seed: int) -> dict:
    """Build, fit, generate and score one trial in the runtime; the record that ruler.json lists."""
    sample, n_tokens = fit(spec.task, lambda t: len(runtime.tokenize(t)), spec.length,
                           trial_seed(seed, spec.task, spec.length, spec.trial))
    new = runtime.generate(runtime.tokenize(sample.text), MAX_NEW_TOKENS[spec.task])
    output = runtime.detokenize(new)
    return {"id": f"{spec.task}:{spec.id}", "task": spec.task, "length": spec.length, "trial": spec.trial,
            "tokens": n_tokens, "budget": budget(spec.task, spec.length), "units": sample.units,
            "answers": list(sample.answers), "output": output, "score": string_match_all(output, sample.answers)}


# what summarize() and the report read of a cached trial (eval.cache checks it on reading)
RECORD_FIELDS = {"task": lambda v: v in TASKS, "length": lambda v: whole(v) and v > 0, "trial": whole,
                 "tokens": whole, "units": whole,
                 "answers": lambda v: isinstance(v, list) and bool(v) and all(isinstance(a, str) for a in v),
                 "output": lambda v: isinstance(v, str), "score": lambda v: number(v) and 0 <= v <= 1}


def parse_tasks(text: str) -> list[str]:
    """'niah_single,vt' → the tasks in TASKS order; 'all' → every task."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if names == ["all"]:
        return list(TASKS)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise InputError(f"--tasks {text!r}: expected a comma-separated list of {', '.join(TASKS)} (or all)")
    return [t for t in TASKS if t in names]


def summarize(records: list[dict], tasks: Sequence[str], lengths: Sequence[int]) -> dict:
    """Mean string_match_all per task × length (RULER's cells), per length (the mean of its tasks: RULER's
    average), and over all."""
    def mean(xs):
        xs = list(xs)
        return sum(xs) / len(xs) if xs else None

    cells = []
    for task in tasks:
        for L in lengths:
            rs = [r for r in records if r["task"] == task and r["length"] == L]
            cells.append({"task": task, "length": L, "trials": len(rs), "score": mean(r["score"] for r in rs),
                          "mean_tokens": mean(r["tokens"] for r in rs)})
    per_length = [{"length": L, "score": mean(c["score"] for c in cells if c["length"] == L
                                             and c["score"] is not None)} for L in lengths]
    per_task = [{"task": t, "score": mean(c["score"] for c in cells if c["task"] == t and c["score"] is not None)}
                for t in tasks]
    return {"per_task_length": cells, "per_length": per_length, "per_task": per_task,
            "average": mean(c["score"] for c in per_length if c["score"] is not None)}
