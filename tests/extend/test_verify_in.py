"""`extend … --verify-in vllm` (a recipe's `parity: {verify_in: [vllm]}`): after the own runtimes' parity, the
safetensors output is proven in vLLM before it is published. What is refused up front (exit 2, one line, nothing
written) and the gate (a failure in vLLM publishes nothing, exit 1) run here without vLLM; the real run on a tiny
head_dim-32 model is in tests/parity/test_vllm.py (one vLLM start)."""

from __future__ import annotations

import json

import pytest
import yaml

from ropeconv.parity import vllm
from tests.conftest import assert_refused, listing, make_tiny, run_cli

HD32 = dict(hidden_size=128, head_dim=32, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def hd32(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("verify-in"), "llama", name="tiny-llama-hd32", **HD32)


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setenv(vllm.ENV, "off")


class FakeVllm:
    """prove_folder without vLLM: the reference's own log-probabilities, off by `error`, judged as vLLM's are."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.error = 0.0

    def __call__(self, folder, plan, base, vocab_size, *, tokens=None, notes=(), progress=lambda _: None):
        import torch

        self.calls.append((folder, base, plan.method, (folder / "config.json").is_file()))
        n = vllm.probe_length(plan, tokens)
        ids = list(range(1, n + 1))
        logp = torch.log_softmax(torch.randn(n, vocab_size, generator=torch.Generator().manual_seed(0)).double(), -1)
        got = [float(logp[i - 1, ids[i]]) + self.error for i in range(1, n)]
        top1 = [int(logp[i].argmax()) for i in range(n - 1)]
        result = vllm.Result(got, top1, {"class": "YaRNScalingRotaryEmbedding"}, n + 1)
        return vllm.judge(str(folder), logp, ids, result, plan.original_ctx, ("vLLM fake",), notes)


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path) -> FakeVllm:
    """An environment that exists (the refusals pass) and a prove_folder that runs no vLLM."""
    monkeypatch.setattr(vllm, "python", lambda: tmp_path / "python")
    fake = FakeVllm()
    monkeypatch.setattr(vllm, "prove_folder", fake)
    return fake


def extend(base, out, *extra, method="yarn"):
    factor = () if method == "none" else ("--factor", "4")
    return run_cli("extend", base, "--method", method, *factor, "--device", "cpu", "-q", "-o", out, *extra)


@pytest.mark.parametrize("method,why", [("dynamic", "NaN"), ("longrope", "long factors")])
def test_a_cell_vllm_reads_wrongly_is_refused_before_a_byte_is_written(method, why, hd32, tmp_path, capsys,
                                                                      fake_vllm):
    extra: tuple = ()
    if method == "longrope":
        factors = tmp_path / "factors.json"
        factors.write_text(json.dumps({"short_factor": [1.0] * 16, "long_factor": [4.0] * 16}))
        extra = ("--factors", factors)
    before = listing(tmp_path)
    rc = extend(hd32, tmp_path / "out", "--verify-in", "vllm", *extra, method=method)
    assert_refused(capsys, rc, tmp_path / "out", before, mentions=("--verify-in vllm", "refused for vLLM", why))
    assert fake_vllm.calls == []


def test_a_small_head_dim_and_an_unmeasured_family_are_refused(tmp_path, capsys, fake_vllm):
    base = make_tiny(tmp_path / "bases", "llama")  # head_dim 16
    before = listing(tmp_path)
    rc = extend(base, tmp_path / "out", "--verify-in", "vllm")
    assert_refused(capsys, rc, tmp_path / "out", before, mentions=("head_dim 16", "32, 64"))
    olmo = make_tiny(tmp_path / "bases", "olmo2", name="tiny-olmo2-hd32", **HD32)
    before = listing(tmp_path)
    rc = extend(olmo, tmp_path / "out", "--verify-in", "vllm", method="linear")
    assert_refused(capsys, rc, tmp_path / "out", before, mentions=("olmo2", "not measured in vLLM"))


def test_a_sliding_window_shorter_than_the_target_is_refused(tmp_path, capsys, fake_vllm):
    """vLLM's sliding-window attention is not measured: a mistral whose window is shorter than the target."""
    base = make_tiny(tmp_path / "bases", "mistral", name="tiny-mistral-window", sliding_window=32, **HD32)
    before = listing(tmp_path)
    rc = extend(base, tmp_path / "out", "--verify-in", "vllm")
    assert_refused(capsys, rc, tmp_path / "out", before, mentions=("sliding_window 32", "not measured"))


def test_a_missing_vllm_environment_is_refused_with_make_vllm(hd32, tmp_path, capsys, no_vllm):
    before = listing(tmp_path)
    rc = extend(hd32, tmp_path / "out", "--verify-in", "vllm")
    assert_refused(capsys, rc, tmp_path / "out", before, mentions=("make vllm", "--verify-in vllm"))


@pytest.mark.parametrize("extra,mentions", [
    (("--no-verify",), ("--no-verify", "--verify-in vllm")),
    (("--to", "onnx"), ("safetensors", "--verify-in vllm")),
    (("--verify-in", "sglang"), ("--verify-in", "sglang")),
])
def test_options_that_cannot_go_together_are_refused(extra, mentions, hd32, tmp_path, capsys, fake_vllm):
    before = listing(tmp_path)
    rc = extend(hd32, tmp_path / "out", "--verify-in", "vllm", *extra)
    if extra[-1] == "sglang":  # click's own choice check: a usage error
        assert rc == 2 and "sglang" in capsys.readouterr().err and not (tmp_path / "out").exists()
        return
    assert_refused(capsys, rc, tmp_path / "out", before, mentions=mentions)


def test_a_vllm_failure_publishes_nothing(hd32, tmp_path, capsys, fake_vllm):
    """The own runtimes pass, vLLM's log-probabilities are off: exit 1, nothing written."""
    fake_vllm.error = 10 * vllm.MAX_ABS_LOGPROB
    before = listing(tmp_path)
    rc = extend(hd32, tmp_path / "out", "--verify-in", "vllm")
    err = capsys.readouterr().err
    assert rc == 1 and "parity failed in vLLM fake" in err and "nothing written" in err, err
    assert listing(tmp_path) == before
    [(folder, base, method, had_config)] = fake_vllm.calls
    assert base == hd32 and method == "yarn" and had_config  # the staged folder, its config.json written


def test_a_vllm_pass_goes_into_the_manifest_and_the_json_report(hd32, tmp_path, capsys, fake_vllm):
    rc = run_cli("extend", hd32, "--method", "yarn", "--factor", "4", "--device", "cpu", "-o", tmp_path / "out",
                 "--verify-in", "vllm", "--json", "-q", "--save-recipe", tmp_path / "saved.yaml")
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert saved["parity"]["verify_in"] == ["vllm"], saved  # the saved recipe repeats the proof
    assert run_cli("recipe", "check", tmp_path / "saved.yaml") == 0
    assert [r["runtime"] for r in result["reports"]][-1] == "vllm"
    parity = json.loads((tmp_path / "out" / "manifest.json").read_text())["parity"]
    assert parity["vllm"]["passed"] is True and parity["vllm"]["runtime"] == "vllm", parity
    assert parity["vllm"]["tolerance"] == {"max_abs_logprob": vllm.MAX_ABS_LOGPROB, "min_top1": vllm.MIN_TOP1}
    assert parity["safetensors"]["passed"] is True


def test_the_recipe_key_is_parity_verify_in(hd32, tmp_path, capsys, no_vllm):
    """`parity: {verify_in: [vllm]}` in YAML is the same option: checked by `recipe check`, refused up front by
    `recipe run` without vLLM (exit 2, nothing written), and an engine it does not know is named with its path."""
    recipe = {"base": {"path": str(hd32)}, "method": {"name": "yarn", "factor": 4},
              "outputs": [{"format": "safetensors"}], "out": str(tmp_path / "out"),
              "parity": {"verify_in": ["vllm"], "device": "cpu"}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert run_cli("recipe", "check", path) == 0
    capsys.readouterr()
    rc = run_cli("recipe", "run", path)
    err = capsys.readouterr().err
    assert rc == 2 and "make vllm" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    recipe["parity"]["verify_in"] = ["sglang"]
    path.write_text(yaml.safe_dump(recipe))
    rc = run_cli("recipe", "check", path)
    err = capsys.readouterr().err
    assert rc == 2 and "parity.verify_in" in err and "sglang" in err, err
