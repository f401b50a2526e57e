"""Gemma 3 (gemma3_text): per-layer-type rope. The method scales the full-attention layers; the sliding-window layers
keep their own base unscaled. The per-method parity cells run in the shared matrices (parity/test_archs,
onnx_export/test_export, gguf_export/test_convert, parity/test_tf4); here: each runtime fails when the sliding layers
are rotated the wrong way, 4.x needs its own key for their base, what GGUF cannot carry is refused in one line, and a
gemma3 GGUF is retrofitted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ropeconv.parity import tf4
from tests.conftest import (
    ORIGINAL_CTX,
    add_byte_level_tokenizer,
    assert_refused,
    gguf_tensor_digests,
    listing,
    make_tiny,
    read_json,
    run_cli,
)

TOKENS = str(4 * ORIGINAL_CTX)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    # tiny config (conftest): layer 0 sliding (window 32, base 500), layer 1 full (base 10000)
    return add_byte_level_tokenizer(make_tiny(tmp_path_factory.mktemp("gemma3"), "gemma3_text"))


def _extend(base: Path, out: Path, method: str, *extra: str) -> int:
    return run_cli("extend", base, "--method", method, "--factor", "4", "-o", out, "--tokens", TOKENS, "-q", *extra)


def test_config_declares_the_method_on_full_layers_and_the_local_base_for_both_majors(base, tmp_path):
    assert _extend(base, tmp_path / "out", "yarn", "--no-verify") == 0
    config = read_json(tmp_path / "out" / "config.json")
    rope = config["rope_parameters"]
    assert rope["full_attention"]["rope_type"] == "yarn" and rope["full_attention"]["factor"] == 4.0
    assert rope["sliding_attention"] == {"rope_type": "default", "rope_theta": 500.0}  # 5.x
    assert config["rope_local_base_freq"] == 500.0 and config["rope_scaling"]["rope_type"] == "yarn"  # 4.x
    assert config["rope_theta"] == 10000.0


def test_transformers_fails_when_the_sliding_layers_take_the_full_layers_base(base, tmp_path, capsys):
    out = tmp_path / "out"
    assert _extend(base, out, "linear", "--no-verify") == 0
    config = read_json(out / "config.json")
    config["rope_parameters"]["sliding_attention"]["rope_theta"] = 10000.0  # the local base lost, for both majors
    config["rope_local_base_freq"] = 10000.0  # (one lost alone is refused: 4.x and 5.x would disagree)
    (out / "config.json").write_text(json.dumps(config))
    assert run_cli("verify", out, "--tokens", TOKENS, "-q") == 1
    # a config whose sliding layers carry a method of their own is not one ropeconv reads
    config["rope_parameters"]["sliding_attention"] = {**config["rope_parameters"]["full_attention"], "rope_theta": 500.0}
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert run_cli("verify", out, "--tokens", TOKENS, "-q") == 2
    assert "sliding_attention layers unscaled" in capsys.readouterr().err


def test_onnx_fails_when_the_method_rotates_every_layer(base, tmp_path, monkeypatch):
    import ropeconv.onnx_export.plan as onnx_plan

    # (the same request passes: onnx_export/test_export's gemma3_text-yarn cell)
    # the plan's rope on the sliding layer too
    monkeypatch.setattr(onnx_plan, "layer_thetas", lambda config, arch: None)
    assert _extend(base, tmp_path / "bad", "yarn", "--to", "onnx") == 1
    assert not (tmp_path / "bad").exists()


def test_4x_reads_the_sliding_base_from_its_own_key(base, tmp_path, tf4_python):
    """One start of 4.x runs the output and the same output without rope_local_base_freq (5.x still reads the local
    base from rope_parameters; 4.x falls back to 10000): the first matches the reference, the second does not."""
    import torch

    from ropeconv.parity import Tolerance
    from ropeconv.parity.probe import plan_passes, probe_ids
    from ropeconv.parity.reference import load_reference
    from ropeconv.parity.report import compare
    from ropeconv.parity.runtimes import hf
    from ropeconv.positions import plan_from_json

    out, lost = tmp_path / "out", tmp_path / "lost"
    assert _extend(base, out, "yarn", "--no-verify") == 0
    shutil.copytree(out, lost)
    config = read_json(lost / "config.json")
    del config["rope_local_base_freq"]
    (lost / "config.json").write_text(json.dumps(config))
    plan = plan_from_json(read_json(out / "manifest.json")["plan"])
    passes = plan_passes(plan, 2 * ORIGINAL_CTX)
    ids = probe_ids(config["vocab_size"], 2 * ORIGINAL_CTX)
    (good, bad), version = tf4.run_jobs([tf4.Job(out, ids, passes), tf4.Job(lost, ids, passes)], tf4_python)
    assert version.startswith("4.")
    reference_model = load_reference(base, plan, torch.device("cpu"))
    reference = [hf.logits(reference_model, ids[:, : p.n_tokens], p.position_ids(), p.decode_steps) for p in passes]
    worst = {}
    for name, logits in (("good", good), ("lost", bad)):
        bands = [b for p, r, c in zip(passes, reference, logits) for b in compare(p, r, c, plan.original_ctx)]
        worst[name] = (max(b.max_abs_logit for b in bands), all(b.within(Tolerance()) for b in bands))
    print(f"gemma3 yarn ×4 in transformers {version}: max|Δlogit| {worst['good'][0]:.3g}; without "
          f"rope_local_base_freq {worst['lost'][0]:.3g}")
    assert worst["good"][1] and not worst["lost"][1], worst


# ------------------------------------------------------------------------------------------------------ GGUF
def _gguf(base: Path, out: Path, method: str, capsys) -> Path:
    # proven as written by gguf_export/test_convert's gemma3_text cells
    assert run_cli("extend", base, "--method", method, "--factor", "4", "--to", "gguf", "--outtype", "f32",
                   "--no-verify", "-o", out, "--json", "-q") == 0
    return out / json.loads(capsys.readouterr().out)["files"][0]


def test_gguf_declares_the_sliding_layers_and_fails_without_their_base(base, tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    from gguf import GGUFValueType

    from ropeconv.gguf_io.reader import read_gguf
    from ropeconv.gguf_io.writer import rewrite_gguf

    gguf_file = _gguf(base, tmp_path / "out", "linear", capsys)
    src = read_gguf(gguf_file)
    assert src.value("general.architecture") == "gemma3"
    assert src.value("gemma3.rope.freq_base_swa") == 500.0 and src.value("gemma3.rope.freq_base") == 10000.0
    assert src.value("gemma3.attention.sliding_window_pattern") == 2  # layer 0 sliding, layer 1 full
    assert src.value("gemma3.attention.sliding_window") == 32
    # llama.cpp's own converter writes no freq_base_swa: llama.cpp then rotates the sliding layers at 10000
    dropped = tmp_path / "no-swa-base.gguf"
    rewrite_gguf(src, dropped, drop_keys={"gemma3.rope.freq_base_swa"})
    assert run_cli("verify", dropped, "--base", base, "--tokens", TOKENS, "-q") == 1
    # and the method declared on the sliding layers' base instead of the full layers' one
    swapped = tmp_path / "swapped.gguf"
    rewrite_gguf(src, swapped, set_fields={"gemma3.rope.freq_base": (GGUFValueType.FLOAT32, 500.0),
                                           "gemma3.rope.freq_base_swa": (GGUFValueType.FLOAT32, 10000.0)})
    assert run_cli("verify", swapped, "--base", base, "--tokens", TOKENS, "-q") == 1


REFUSED = {
    "llama3": (["--method", "llama3", "--factor", "4"], {}, "rope_freqs"),
    "longrope": (["--method", "longrope", "--factor", "4", "--factors", "LR"], {}, "gemma3"),
    "yarn with its own attention factor": (["--method", "yarn", "--factor", "4", "--attention-factor", "1.3"], {},
                                           "sliding"),
    "query_pre_attn_scalar other than head_dim": (["--method", "yarn", "--factor", "4"],
                                                  {"query_pre_attn_scalar": 256}, "query_pre_attn_scalar"),
    "attention soft-cap": (["--method", "yarn", "--factor", "4"], {"attn_logit_softcapping": 50.0},
                           "attn_logit_softcapping"),
    "full layers not periodic": (["--method", "yarn", "--factor", "4"],
                                 {"num_hidden_layers": 3,
                                  "layer_types": ["full_attention", "sliding_attention", "full_attention"]},
                                 "layer_types"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_gguf_refuses_what_llama_cpps_gemma3_cannot_carry(tmp_path, case, capsys):
    pytest.importorskip("llama_cpp")
    args, overrides, words = REFUSED[case]
    base = add_byte_level_tokenizer(make_tiny(tmp_path, "gemma3_text", **overrides))
    if "LR" in args:
        (tmp_path / "lr.json").write_text(json.dumps({"short_factor": [1.0] * 8, "long_factor": [4.0] * 8}))
        args = [str(tmp_path / "lr.json") if a == "LR" else a for a in args]
    out = tmp_path / "out"
    before = listing(tmp_path)
    capsys.readouterr()
    line = assert_refused(capsys, run_cli("extend", base, *args, "--to", "gguf", "-o", out), out, before)
    assert words in line, line


def test_multimodal_gemma3_is_refused_naming_the_text_model(base, tmp_path, capsys):
    folder = tmp_path / "gemma3-mm"
    shutil.copytree(base, folder)
    config = read_json(folder / "config.json")
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": config}))
    out = tmp_path / "out"
    before = listing(tmp_path)
    line = assert_refused(capsys, run_cli("extend", folder, "--method", "yarn", "--factor", "4", "-o", out), out,
                          before)
    assert "gemma3_text" in line, line


def test_retrofit_of_a_foreign_gemma3_gguf_keeps_its_tensors_and_proves_parity(base, tmp_path, capsys):
    """A gemma3 GGUF as llama.cpp's converter ships it, retrofitted; the reference is transformers reading the same
    GGUF, with the sliding layers' base and pattern and the query scale as llama.cpp reads them from the file."""
    pytest.importorskip("llama_cpp")

    from ropeconv.gguf_io.reader import read_gguf
    from tests.gguf_export.test_convert import _foreign_gguf, strip_declaration

    foreign = _foreign_gguf(base, tmp_path, "gemma3", capsys)
    out = tmp_path / "yarn.gguf"
    assert run_cli("extend", foreign, "--method", "yarn", "--factor", "4", "--tokens", TOKENS, "-o", out, "--json",
                   "-q") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parity"]["passed"] and result["parity"]["runtime"] == "llama.cpp"
    assert result["parity"]["last_position"] >= 3 * ORIGINAL_CTX
    print(f"gemma3 retrofit yarn ×4: max|Δlogit| {result['parity']['max_abs_logit']:.3g}")

    assert gguf_tensor_digests(out) == gguf_tensor_digests(foreign)
    meta = read_gguf(out)
    assert meta.value("gemma3.rope.scaling.type") == "yarn" and meta.value("gemma3.rope.freq_base_swa") == 500.0
    assert run_cli("verify", strip_declaration(out), "--base", foreign, "--tokens", TOKENS, "-q") == 1


DAMAGED = {
    "sliding base a string": (lambda c: c["rope_parameters"]["sliding_attention"].update(rope_theta="500"),
                              "sliding_attention"),
    "full layers' rope a list": (lambda c: c["rope_parameters"].update(full_attention=[1]), "full_attention"),
    "layer_types a string": (lambda c: c.update(layer_types="sliding_attention"), "layer_types"),
    "layer_types too short": (lambda c: c.update(layer_types=["full_attention"]), "layer_types"),
    "no full layer": (lambda c: c.update(layer_types=["sliding_attention"] * 2), "full_attention"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_per_layer_type_config_is_refused_in_one_line(base, tmp_path, case, capsys):
    folder = tmp_path / "damaged"
    shutil.copytree(base, folder)
    config = read_json(folder / "config.json")
    damage, words = DAMAGED[case]
    damage(config)
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    before = listing(tmp_path)
    line = assert_refused(capsys, run_cli("extend", folder, "--method", "linear", "--factor", "4", "-o", out), out,
                          before)
    assert words in line, line


def _add_gemma_sentencepiece(model_dir: Path, vocab_size: int = 400) -> Path:
    """Gemma's tokenizer.model kind: SentencePiece BPE with byte fallback and no dummy prefix (a text's first word
    gets no "▁"), ids <pad> 0, <eos> 1, <bos> 2, <unk> 3, and a tokenizer_config.json naming GemmaTokenizer."""
    import io

    import sentencepiece as spm

    from ropeconv.fixtures.tokenizers import CORPUS

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 8), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", unk_piece="<unk>", add_dummy_prefix=False, character_coverage=1.0, num_threads=1,
        minloglevel=2, hard_vocab_limit=False, split_digits=True,
    )
    (model_dir / "tokenizer.model").write_bytes(model.getvalue())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>",
        "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False,
    }))
    return model_dir


def test_gemma_sentencepiece_round_trip_in_llama_cpp(tmp_path, capsys):
    """llama.cpp's tokens for a text equal transformers' for a Gemma-style SentencePiece model (no dummy prefix,
    <bos> at 2), BOS included, and decode back to the text."""
    pytest.importorskip("llama_cpp")
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from ropeconv.gguf_io.reader import read_gguf

    base = _add_gemma_sentencepiece(make_tiny(tmp_path, "gemma3_text", bos_token_id=2, eos_token_id=1, pad_token_id=0))
    assert run_cli("extend", base, "--method", "linear", "--factor", "2", "--to", "gguf", "--outtype", "f32",
                   "--no-verify", "-o", tmp_path / "out", "--json", "-q") == 0
    gguf_file = tmp_path / "out" / json.loads(capsys.readouterr().out)["files"][0]
    src = read_gguf(gguf_file)
    assert src.value("tokenizer.ggml.model") == "llama" and src.value("tokenizer.ggml.bos_token_id") == 2
    text = "The lazy fox's 12345 naïve café 東京 🚀\n\n    return x  # it'll do ok  end"
    hf = AutoTokenizer.from_pretrained(base)(text)["input_ids"]
    llm = Llama(str(gguf_file), vocab_only=True, verbose=False)
    assert hf[0] == 2 and len(hf) > 20
    assert llm.tokenize(text.encode(), add_bos=True, special=True) == hf
    assert llm.detokenize(llm.tokenize(text.encode(), add_bos=False, special=False)).decode() == text


@pytest.mark.parametrize("layer_types,period", [
    (["sliding_attention"] * 5 + ["full_attention"], 6),  # Google's: every 6th layer full
    (["sliding_attention", "full_attention"] * 3, 2),
    (["full_attention"] * 3, None),  # no sliding layer: nothing to declare
    (["full_attention", "sliding_attention", "sliding_attention"], None),  # full first: no period of llama.cpp's
])
def test_sliding_window_pattern_is_llama_cpps_period(layer_types, period):
    from ropeconv.families.gemma3_text import swa_pattern

    config = {"num_hidden_layers": len(layer_types), "layer_types": layer_types}
    assert swa_pattern(config) == period
    if period:  # llama.cpp: layer il slides when il % n < n − 1 (llama_hparams::set_swa_pattern)
        assert [il % period < period - 1 for il in range(len(layer_types))] == \
               [t == "sliding_attention" for t in layer_types]


def test_installing_a_second_plan_swaps_it_instead_of_nesting(base):
    """Before: a second install_plan_rotary wrapped gemma3's kept sliding rotation again (a RecursionError after a
    few dozen installs, as search made one per candidate); now the second plan replaces the first."""
    import torch
    from transformers import AutoModelForCausalLM

    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.methods import get
    from ropeconv.methods.base import ExtendRequest
    from ropeconv.parity.reference import PlanRotaryEmbedding, install_plan_rotary

    scheme = load_checkpoint(base).scheme
    linear, yarn = (get(m).plan(scheme, ExtendRequest(factor=4.0)) for m in ("linear", "yarn"))
    ids = torch.arange(3 * ORIGINAL_CTX).reshape(1, -1) % 300

    def logits(*plans):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        for plan in plans:
            install_plan_rotary(model, plan)
        count = sum(isinstance(m, PlanRotaryEmbedding) for m in model.modules())
        with torch.no_grad():
            return model(ids).logits, count

    once, count_once = logits(yarn)
    swapped, count_swapped = logits(*[linear, yarn] * 20)
    assert count_swapped == count_once
    assert torch.equal(swapped, once)
    assert not torch.equal(logits(linear)[0], once)  # the two plans differ past the original context
