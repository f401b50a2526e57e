"""The model card's "Long context" section (Qwen's "Processing Long Texts", for an output whose scaling is baked in):
the method, factor and contexts; one command per engine whose parity passed, from its format's serve hook, naming the
artifact and the target context; no command for an engine not proven; the parity figures the manifest records; the
short-text caveat per length rule. One real output in every format (tiny llama, YaRN ×4), then the card re-rendered
from its manifest with other parity records."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from ropeconv.export.card import _figure, _short_text_caveat, long_context_section, model_card
from ropeconv.formats import FORMATS, Format
from ropeconv.parity.report import Band, ParityReport, Tolerance, bound
from ropeconv.positions import AlibiPlan, LengthRule, RopePlan, plan_from_json
from tests.conftest import ORIGINAL_CTX, add_byte_level_tokenizer, make_tiny, read_json, run_cli

TARGET = 4 * ORIGINAL_CTX


def _mlx_installed() -> bool:
    try:
        import mlx_lm  # noqa: F401
    except ImportError:
        return False
    return True


FORMATS_WRITTEN = ["safetensors", "gguf", "onnx"] + (["mlx"] if _mlx_installed() else [])


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("long-context")
    base = add_byte_level_tokenizer(make_tiny(root, "llama"))
    out = root / "out"
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", ",".join(FORMATS_WRITTEN), "-o", out,
                   "--tokens", str(3 * ORIGINAL_CTX), "-q") == 0
    return out


def section(card: str) -> str:
    found = re.search(r"^## Long context\n(.*?)^## Parity\n", card, re.S | re.M)
    assert found, "no Long context section before Parity"
    return found.group(1)


def engine_block(text: str, engine: str) -> str:
    """The engine's paragraph: its bold heading, code block and note, up to the next engine."""
    found = re.search(rf"^\*\*{re.escape(engine)}\*\* \(.*?(?=^\*\*|\Z)", text, re.S | re.M)
    assert found, f"no {engine} command"
    return found.group(0)


def rerender(out: Path, parity) -> str:
    manifest = read_json(out / "manifest.json")
    return model_card("tiny-llama", "llama", plan_from_json(manifest["plan"]), manifest["formats"], parity)


def test_the_section_names_the_method_factor_and_contexts(output):
    text = section((output / "README.md").read_text())
    assert f"from {ORIGINAL_CTX} to **{TARGET} tokens** with `yarn` ×4 (static)" in text
    assert "baked in" in text and "no runtime flag is needed" in text
    assert "static scaling" in text and "every length" in text


def test_each_proven_engine_has_its_command_naming_its_file_and_the_target_context(output):
    manifest = read_json(output / "manifest.json")
    text = section((output / "README.md").read_text())
    gguf_file = manifest["formats"]["gguf"]["file"]
    assert f"llama-server -m OUT/{gguf_file} -c {TARGET}\n" in engine_block(text, "llama.cpp")
    assert f'InferenceSession("OUT/{manifest["formats"]["onnx"]["file"]}")' in engine_block(text, "onnxruntime")
    assert f"a context of {TARGET}" in engine_block(text, "onnxruntime")
    hf = engine_block(text, "transformers")
    assert 'AutoModelForCausalLM.from_pretrained("OUT", dtype="auto")' in hf and f"up to {TARGET} tokens" in hf
    if "mlx" in manifest["formats"]:
        assert "mlx_lm.generate --model OUT/mlx " in engine_block(text, "mlx-lm")
    # no vLLM line: the manifest records no vLLM proof
    assert "vllm serve" not in text


def test_the_figures_are_the_manifests(output):
    manifest = read_json(output / "manifest.json")
    text = section((output / "README.md").read_text())
    for name in manifest["formats"]:
        engine = FORMATS[name].runtime
        rec = manifest["parity"][name]
        assert rec["max_abs_logit"] == bound(rec["max_abs_logit"]) and 0 < rec["max_abs_logit"] < 1e-2
        block = engine_block(text, engine)
        assert (f"max |Δlogit| {rec['max_abs_logit']:.2g}, top-1 agreement {rec['top1']:.1%} over positions "
                f"{rec['first_position']}–{rec['last_position']} ({rec['tokens']} probe tokens)") in block, block


def test_a_figure_changed_in_the_manifest_changes_the_card(output):
    """The figures are read from the parity records, not computed elsewhere."""
    parity = copy.deepcopy(read_json(output / "manifest.json")["parity"])
    parity["gguf"]["max_abs_logit"] = 0.0042
    assert "max |Δlogit| 0.0042" in engine_block(section(rerender(output, parity)), "llama.cpp")


def test_an_engine_not_proven_gets_no_command(output):
    parity = copy.deepcopy(read_json(output / "manifest.json")["parity"])
    del parity["gguf"]  # not checked
    parity["onnx"]["passed"] = False  # checked, failed
    text = section(rerender(output, parity))
    assert "llama-server" not in text and "**llama.cpp**" not in text
    assert "InferenceSession" not in text and "**onnxruntime**" not in text
    assert "from_pretrained" in text  # the others stay
    none = section(rerender(output, None))
    assert "from_pretrained" not in none and "llama-server" not in none and "no command is given" in none


def test_vllm_gets_its_line_only_from_a_passed_vllm_record(output):
    parity = copy.deepcopy(read_json(output / "manifest.json")["parity"])
    vllm = {"passed": True, "runtime": "vllm", "device": "cpu", "tokens": 97, "first_position": 0,
            "last_position": 95, "max_abs_logprob": 0.0031, "top1": 1.0, "ran": ["vLLM 0.32.0"]}
    parity["vllm"] = vllm  # as `extend --verify-in vllm` records it
    block = engine_block(section(rerender(output, parity)), "vLLM")
    assert f"vllm serve OUT --max-model-len {TARGET}\n" in block
    assert "max |Δ log-probability| 0.0031, top-1 agreement 100.0% over positions 0–95 (97 probe tokens) in " \
           "vLLM 0.32.0" in block
    parity["vllm"] = dict(vllm, passed=False)
    assert "vllm serve" not in rerender(output, parity)


def test_the_vllm_record_extend_writes_carries_the_figure_the_card_quotes(output):
    """VllmReport.card_summary (what `extend --verify-in vllm` puts in the manifest) → the card's vLLM line."""
    from ropeconv.parity import vllm

    bands = (vllm.Band("within", 0, 63, 2.04e-5, 1.0), vllm.Band("beyond", 64, 190, 3.13e-5, 1.0))
    report = vllm.VllmReport("OUT", 192, ORIGINAL_CTX, bands, {}, 193, ("vLLM 0.32.0",))
    rec = report.card_summary()
    assert rec["max_abs_logprob"] == 3.2e-5 and rec["top1"] == 1.0
    parity = dict(read_json(output / "manifest.json")["parity"], vllm=rec)
    block = engine_block(section(rerender(output, parity)), "vLLM")
    assert "max |Δ log-probability| 3.2e-05, top-1 agreement 100.0% over positions 0–190 (192 probe tokens)" in block


def test_another_engine_on_the_safetensors_folder_gets_its_line_from_its_record(output):
    """A proof recorded under an engine's name (not a format's) is of the checkpoint folder: mlx-lm's command names
    the folder itself, not mlx/."""
    parity = copy.deepcopy(read_json(output / "manifest.json")["parity"])
    parity.pop("mlx", None)
    parity["mlx-lm"] = dict(parity["safetensors"], runtime="mlx-lm", ran=[])
    text = section(rerender(output, parity))
    assert "mlx_lm.generate --model OUT " in engine_block(text, "mlx-lm")


def test_a_format_without_a_serve_hook_gets_no_command():
    """The hook's default: no command, even when the format's parity passed."""
    plan = _rope(LengthRule.STATIC)
    fmt = Format("throwaway", ".thr", "thr-engine", "thr")
    assert fmt.serve("OUT", {}, plan, "thr-engine") is None


def _rope(rule: LengthRule, attention: float = 1.0, short=(1.0, 1.0)) -> RopePlan:
    return RopePlan("m", 10000.0, 4, 64, 256, 4.0, short, attention, rule,
                    (4.0, 4.0) if rule is LengthRule.SWITCH else None, {"factor": 4.0})


@pytest.mark.parametrize(("plan", "says", "not_says"), [
    (_rope(LengthRule.STATIC, 1.2), ("static scaling", "attention factor 1.2", "every length"), ("unaffected",)),
    (_rope(LengthRule.DYNAMIC_NTK), ("unaffected", "exceeds 64 tokens"), ("static",)),
    (_rope(LengthRule.SWITCH, 1.19), ("at most 64 tokens runs with the base's own frequencies",
                                      "attention factor 1.19 applies at every length", "llama.cpp once per context"),
     ("static",)),
    (_rope(LengthRule.SWITCH, 1.0, (1.0, 2.0)), ("runs with the short factors",), ("attention factor",)),
    (AlibiPlan("alibi", (0.5, 0.25), 64, 256, 4.0, LengthRule.PROPORTIONAL), ("unaffected", "64 keys"), ("static",)),
    (AlibiPlan("alibi", (0.5, 0.25), 64, 256, 4.0, LengthRule.STATIC), ("divided by 4 at every length",),
     ("unaffected",)),
])
def test_the_short_text_caveat_follows_the_length_rule(plan, says, not_says):
    caveat = _short_text_caveat(plan)
    for needle in says:
        assert needle in caveat, caveat
    for needle in not_says:
        assert needle not in caveat, caveat


def test_no_section_without_an_extension():
    plan = RopePlan("none", 10000.0, 4, 64, 64, 1.0, (1.0, 1.0))
    assert long_context_section(plan, {}, None) == []


def test_the_card_summary_records_bounded_figures():
    bands = (Band("probe", 0, 63, 64, 3.14159e-5, 1e-9, 1.0), Band("probe", 64, 191, 128, 7.01e-5, 2e-9, 0.99218),
             Band("q-probe", 0, 191, 192, 0.5, 0.00712, 0.8812, quantized=True))
    summary = ParityReport("llama.cpp", "cpu", 192, 64, 0, 191, bands, Tolerance()).card_summary()
    assert summary["max_abs_logit"] == 7.1e-5 and summary["top1"] == 0.9921
    assert summary["quantized_mean_kl"] == 0.0072 and summary["quantized_top1"] == 0.8812
    rec = dict(summary, passed=True)
    assert _figure(rec).startswith("the file itself: mean KL 0.0072, top-1 agreement 88.1%; its float32 twin: "
                                   "max |Δlogit| 7.1e-05, top-1 agreement 99.2% over positions 0–191")
