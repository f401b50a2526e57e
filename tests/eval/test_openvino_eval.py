"""`ropeconv eval --runtime openvino`: a tiny llama yarn output's openvino/ folder run by OpenVINO (eval.openvino_runtime,
one worker process in .venv-ov per model) against transformers on the same plan's safetensors: the very same token ids,
the same log-probabilities past the original context and the same greedy tokens; the scaling-stripped safetensors
scores far off (the comparison can fail). Without .venv-ov the running tests skip, unless ROPECONV_REQUIRE_OPENVINO=1
(make test), where they fail."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from ropeconv.errors import InputError
from ropeconv.eval import runtimes as rt
from ropeconv.openvino_export import env
from tests.conftest import (
    ORIGINAL_CTX,
    add_byte_level_tokenizer,
    assert_refused,
    listing,
    make_tiny,
    read_json,
    run_cli,
)
from tests.formats.test_openvino import OV, needs_ov

MAX_LOGPROB = 1e-3  # measured ~6e-6
MIN_WRONG = 0.1


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    if OV is None:
        pytest.fail("ROPECONV_REQUIRE_OPENVINO=1 and no OpenVINO environment: make openvino")
    root = tmp_path_factory.mktemp("ov-eval")
    base = add_byte_level_tokenizer(make_tiny(root, "llama"))
    out = root / "yarn"  # ×4: 256 tokens
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "safetensors,openvino",
                   "--no-verify", "-q", "-o", out) == 0
    stripped = root / "yarn-stripped"  # the same safetensors with the scaling taken out of config.json
    shutil.copytree(out, stripped, ignore=shutil.ignore_patterns("openvino"))
    config = read_json(stripped / "config.json")
    config.pop("rope_scaling", None)
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": config.get("rope_theta", 10000.0)}
    (stripped / "config.json").write_text(json.dumps(config))
    only = root / "ov-only"  # an output written --to openvino alone: its openvino/ folder, nothing beside
    shutil.copytree(out / "openvino", only / "openvino")
    return {"yarn": out, "stripped": stripped, "only": only}


@needs_ov
def test_openvino_scores_and_generates_what_transformers_does(outputs):
    import torch

    out, cpu = outputs["yarn"], torch.device("cpu")
    ref = rt.resolve(out, "openvino")
    assert (ref.runtime, ref.runtime_name, ref.path) == ("openvino", "openvino", out / "openvino")
    assert rt.resolve(out).runtime == "hf"  # --runtime auto: the output's transformers folder comes first
    assert rt.resolve(outputs["only"]).path == outputs["only"] / "openvino"  # … and an openvino/ alone is found
    # the openvino/ folder itself is OpenVINO's (its marker), never transformers' (config.json + openvino_model.bin)
    assert rt.resolve(out / "openvino").runtime == "openvino"
    with pytest.raises(InputError, match="no model for --runtime hf"):
        rt.resolve(out / "openvino", "hf")
    # its cached results are keyed by the output's manifest, which lists openvino/; the copy without one is not
    assert rt.model_hash(ref) != rt.model_hash(rt.resolve(outputs["only"], "openvino"))
    started = time.monotonic()
    with rt.open_runtime(ref, cpu) as ov, \
            rt.open_runtime(rt.resolve(out, "hf"), cpu) as hf, \
            rt.open_runtime(rt.resolve(outputs["stripped"], "hf"), cpu) as unscaled:
        text = "the quick brown fox jumps over the lazy dog and keeps on running " * 8
        ids = ov.tokenize(text)[: 3 * ORIGINAL_CTX]
        assert len(ids) > 2 * ORIGINAL_CTX and ids == hf.tokenize(text)[: 3 * ORIGINAL_CTX]
        assert ov.detokenize(ids[:20]) == hf.detokenize(ids[:20])
        got, want = ov.token_logprobs(ids), hf.token_logprobs(ids)
        assert got.shape == want.shape == (len(ids) - 1,)
        gap = float(np.max(np.abs(got - want)))
        past = float(np.max(np.abs(got - want)[ORIGINAL_CTX:]))
        assert past <= MAX_LOGPROB and gap <= MAX_LOGPROB, (past, gap)
        # the same comparison tells an output whose scaling was dropped
        wrong = float(np.max(np.abs(got - unscaled.token_logprobs(ids))[ORIGINAL_CTX:]))
        assert wrong > MIN_WRONG, wrong
        tokens = ov.generate(ids, 12)
        assert len(tokens) == 12 or tokens[-1] in ov.eos_ids
        assert tokens == hf.generate(ids, 12)
        assert ov.generate(ids, 12) == tokens  # the worker's KV cache starts afresh each request
        print(f"OpenVINO {ov.versions.get('openvino')} vs transformers, yarn ×4, {len(ids)} tokens: max |Δ log-prob| "
              f"{gap:.2e} ({past:.2e} past {ORIGINAL_CTX}); vs stripped {wrong:.3g}; "
              f"{time.monotonic() - started:.1f} s")


@needs_ov
def test_eval_passkey_and_ppl_run_in_openvino(outputs, tmp_path, capsys):
    """The CLI through --runtime openvino: passkey's greedy answers and ppl's score are transformers' own."""
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog and keeps on running. " * 40)
    found: dict[str, dict] = {}
    for runtime, model in (("openvino", outputs["yarn"] / "openvino"), ("hf", outputs["yarn"])):
        out = tmp_path / runtime
        assert run_cli("eval", "passkey", model, "--runtime", runtime, "--lengths", "200", "--trials", "1",
                       "-o", out, "-q") == 0
        capsys.readouterr()
        assert run_cli("eval", "ppl", model, "--runtime", runtime, "--text", text, "--lengths", "200", "--json",
                       "-q", "--cache-dir", tmp_path / "cache") == 0
        found[runtime] = {"passkey": read_json(out / "passkey.json"), "ppl": json.loads(capsys.readouterr().out)}
    assert found["openvino"]["passkey"]["runtime"] == "openvino" and found["hf"]["passkey"]["runtime"] == "transformers"
    pick = ("tokens", "key", "depth", "output", "hit")
    assert [{k: t[k] for k in pick} for t in found["openvino"]["passkey"]["trials"]] == \
        [{k: t[k] for k in pick} for t in found["hf"]["passkey"]["trials"]]
    ov, hf = (found[k]["ppl"]["results"][0] for k in ("openvino", "hf"))
    assert ov["runtime"] == "openvino" and ov["tokens"] == hf["tokens"] == 199
    assert abs(ov["nll"] - hf["nll"]) < 1e-4, (ov["nll"], hf["nll"])


def test_openvino_is_a_runtime_choice():
    assert rt.kinds()["openvino"].name == "openvino" and "openvino" in rt.runtime_choices()


def test_without_the_openvino_environment_it_is_one_line(tmp_path, capsys, monkeypatch):
    from ropeconv.formats.openvino import MARKER

    monkeypatch.setenv(env.ENV, "off")
    folder = tmp_path / "m" / "openvino"
    folder.mkdir(parents=True)
    for name in (MARKER, "openvino_model.xml", "config.json"):
        (folder / name).write_text("{}")
    out = tmp_path / "eval"
    before = listing(tmp_path)
    rc = run_cli("eval", "passkey", tmp_path / "m", "--runtime", "openvino", "--lengths", "200", "-o", out, "-q")
    assert_refused(capsys, rc, out, before, mentions=("make openvino", env.ENV))
