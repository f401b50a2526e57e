"""HF → GGUF: tiny random models of every GGUF architecture, converted, run in the real llama.cpp and
compared with transformers under the same plan; each cell fails once its declaration is dropped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ropeconv import methods
from ropeconv.capabilities import family_cell, family_cells
from ropeconv.families import FAMILIES
from ropeconv.gguf_export.plan import plan_gguf
from ropeconv.gguf_io.reader import read_gguf
from ropeconv.gguf_io.writer import rewrite_gguf
from ropeconv.methods.base import ExtendRequest, Support
from tests.conftest import (
    ORIGINAL_CTX,
    TINY,
    add_byte_level_tokenizer,
    assert_refused,
    default_cells,
    gguf_tensor_digests,
    listing,
    make_tiny,
    read_json,
    run_cli,
)

pytest.importorskip("llama_cpp")

# every (architecture, method) the matrix claims for GGUF for a converted checkpoint (capabilities.family_cell: rope_freqs
# carriers only where llama.cpp's loader reads them, LongRoPE tensors only on llama and phi3, …), none aside (no
# declaration to strip); dynamic is refused there and --bake-at N is its static way out, proven on llama
ROPE_ARCHS = [a for a, fam in FAMILIES.items() if fam.position == "rope" and fam.gguf is not None]
CELLS: dict[str, list[str]] = {a: [] for a in ROPE_ARCHS}
for _arch, _method in family_cells("gguf", "rope"):
    if _method != "none":
        CELLS[_arch].append(_method)
CELLS["llama"].append("dynamic")
REFUSED = [(a, m.NAME) for a in ROPE_ARCHS for m in methods.ordered() if "rope" in methods.positions_of(m)
           and family_cell(a, m.NAME, "gguf").support is Support.REFUSED]
# llama.cpp always takes the token embedding as the output matrix there; the tiny configs untie by default
TIED = {a: dict(tie_word_embeddings=True) for a in ROPE_ARCHS if FAMILIES[a].gguf.output_is_embedding}
HALF = ORIGINAL_CTX // 2


def method_args(method: str, rotary_pairs: int, tmp: Path) -> list[str]:
    if method == "dynamic":
        return ["--factor", "4", "--bake-at", str(3 * ORIGINAL_CTX)]
    if method == "freqs":
        path = tmp / "freqs.json"
        path.write_text(json.dumps([1.0 + 3.0 * j / (rotary_pairs - 1) for j in range(rotary_pairs)]))
        return ["--factors", str(path), "--factor", "4"]
    if method == "longrope":
        path = tmp / "lr.json"
        path.write_text(json.dumps({"short_factor": [1.0 + 0.5 * j / rotary_pairs for j in range(rotary_pairs)],
                                    "long_factor": [1.0 + 3.0 * j / rotary_pairs for j in range(rotary_pairs)]}))
        return ["--factors", str(path), "--factor", "4"]
    return ["--factor", "4"]


# llama.cpp rounds every context up to a multiple of 256 and picks LongRoPE's long factors above the original
# context, so the short regime is reachable only from an original context of 256 or more
LONGROPE_CTX = 256


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-bases")
    out = {arch: add_byte_level_tokenizer(make_tiny(root, arch, **TIED.get(arch, {}))) for arch in CELLS}
    for arch in [a for a, ms in CELLS.items() if "longrope" in ms]:
        longer = dict(max_position_embeddings=LONGROPE_CTX)
        if "original_max_position_embeddings" in TINY[arch]:  # phi3 states it apart
            longer["original_max_position_embeddings"] = LONGROPE_CTX
        out[f"{arch}-256"] = add_byte_level_tokenizer(make_tiny(root, arch, name=f"{arch}-256", **longer))
    return out


def strip_declaration(gguf_path: Path) -> Path:
    """The same file without its extension: what a converter that drops it would ship."""
    src = read_gguf(gguf_path)
    arch = src.value("general.architecture")
    drop = {f.key for f in src.fields if f.key.startswith(f"{arch}.rope.scaling.")}
    drop.discard(f"{arch}.rope.scaling.type")  # llama reads its longrope tensors only under this type
    if src.value(f"{arch}.rope.scaling.type") != "longrope":
        drop.add(f"{arch}.rope.scaling.type")
    add = {t.name: np.ones(t.shape, dtype=np.float32) for t in src.tensors
           if t.name in ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")}
    set_fields = {}
    plan = json.loads(src.value("ropeconv.plan"))
    if plan["method"] in ("ntk", "dynamic"):  # the declaration is the base itself
        from gguf import GGUFValueType

        original_theta = read_json(Path(src.value("ropeconv.base_path")) / "config.json").get("rope_theta", 10000.0)
        set_fields[f"{arch}.rope.freq_base"] = (GGUFValueType.FLOAT32, float(original_theta))
    out = gguf_path.with_name("stripped.gguf")
    rewrite_gguf(src, out, drop_keys=drop, add_tensors=add, set_fields=set_fields)
    return out


@pytest.mark.parametrize("arch,method", default_cells([(a, m) for a, ms in CELLS.items() for m in ms], "gguf"))
def test_converted_gguf_matches_transformers_beyond_the_original_context(bases, tmp_path, arch, method, capsys):
    base = bases[f"{arch}-256" if method == "longrope" else arch]
    original = LONGROPE_CTX if method == "longrope" else ORIGINAL_CTX
    config = read_json(base / "config.json")
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    rotary = int(head_dim * config.get("rotary_pct", 1.0))
    out = tmp_path / "out"
    args = method_args(method, rotary // 2, tmp_path)
    tokens = str(4 * ORIGINAL_CTX if method != "longrope" else 3 * LONGROPE_CTX // 2)
    assert run_cli("extend", base, "--method", method, *args, "--to", "gguf", "--outtype", "f32",
                   "--tokens", tokens, "-o", out, "--json", "-q") == 0
    result = json.loads(capsys.readouterr().out)
    gguf_file = out / result["files"][0]
    assert result["parity"]["passed"] and result["parity"]["runtime"] == "llama.cpp"
    assert result["parity"]["last_position"] >= 3 * original // 2 - 1  # beyond the original context
    src = read_gguf(gguf_file)
    assert src.value(f"{src.value('general.architecture')}.context_length") == 4 * original
    assert {t.ggml_type.name for t in src.tensors} == {"F32"}

    stripped = strip_declaration(gguf_file)
    assert run_cli("verify", stripped, "--base", base, "--tokens", tokens, "-q") == 1


@pytest.mark.parametrize("arch,method", REFUSED)
def test_refused_cell_is_refused_in_one_line(bases, tmp_path, arch, method, capsys):
    """A cell the matrix refuses for a family is refused by extend --to gguf: exit 2, one line, nothing written."""
    from ropeconv.checkpoint import load_checkpoint

    args = [a for a in method_args(method, load_checkpoint(bases[arch]).scheme.n_pairs, tmp_path)
            if a not in ("--bake-at", str(3 * ORIGINAL_CTX))]
    out = tmp_path / "out"
    before = listing(tmp_path)
    capsys.readouterr()
    rc = run_cli("extend", bases[arch], "--method", method, *args, "--to", "gguf", "--no-verify", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=(method,))


def test_safetensors_and_gguf_from_one_pass_both_proven(bases, tmp_path):
    out = tmp_path / "both"
    assert run_cli("extend", bases["qwen2"], "--method", "yarn", "--factor", "4", "--to", "safetensors,gguf",
                   "--outtype", "f16", "-o", out, "-q") == 0
    manifest = read_json(out / "manifest.json")
    name = manifest["formats"]["gguf"]["file"]
    assert (out / "model.safetensors").is_file() and (out / name).is_file() and (out / "config.json").is_file()
    assert manifest["parity"]["safetensors"]["passed"] and manifest["parity"]["gguf"]["passed"]
    assert manifest["files"][name]["bytes"] == (out / name).stat().st_size
    assert manifest["formats"]["gguf"]["declaration"]["qwen2.rope.scaling.type"] == "yarn"
    assert not list(out.glob(".*twin*"))  # the float32 twin used for the strict check is gone
    card = (out / "README.md").read_text()
    assert "llama.cpp running the GGUF" in card and "transformers reloading" in card
    # verify re-proves both artifacts from the manifest
    assert run_cli("verify", out, "-q") == 0


@pytest.mark.parametrize("outtype,expected", [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")])
def test_outtypes_are_written_and_judged_through_a_float32_twin(bases, tmp_path, outtype, expected, capsys):
    out = tmp_path / outtype
    assert run_cli("extend", bases["llama"], "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype",
                   outtype, "-o", out, "--json", "-q") == 0
    result = json.loads(capsys.readouterr().out)
    src = read_gguf(out / result["files"][0])
    kinds = {t.name: t.ggml_type.name for t in src.tensors}
    assert kinds["blk.0.attn_q.weight"] == expected and kinds["blk.0.attn_norm.weight"] == "F32"
    bands = result["parity"]["bands"]
    assert any(b["quantized"] for b in bands) and any(not b["quantized"] for b in bands)
    assert "converted from the base in float32" in " ".join(result["parity"]["notes"])


ROUND_TRIP_TEXT = "The lazy fox's 12345 naïve café 東京 🚀\n\n    return x  # it'll do</s> ok  end"


@pytest.mark.parametrize("kind", ["byte-level BPE", "SentencePiece", "Qwen BPE"])
def test_tokenizer_round_trip_in_llama_cpp(tmp_path, kind, capsys):
    """llama.cpp's tokens for a text equal transformers' for the source model, BOS and specials included."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from ropeconv.fixtures.tokenizers import add_byte_level_bpe, add_qwen_bpe, add_sentencepiece

    base = make_tiny(tmp_path, "qwen3" if kind == "Qwen BPE" else "llama")
    {"byte-level BPE": add_byte_level_bpe, "SentencePiece": add_sentencepiece, "Qwen BPE": add_qwen_bpe}[kind](base)
    assert run_cli("extend", base, "--method", "linear", "--factor", "2", "--to", "gguf", "--outtype", "f32",
                   "--no-verify", "-o", tmp_path / "out", "--json", "-q") == 0
    gguf_file = tmp_path / "out" / json.loads(capsys.readouterr().out)["files"][0]
    src = read_gguf(gguf_file)
    byte_level = kind != "SentencePiece"
    assert src.value("tokenizer.ggml.model") == ("gpt2" if byte_level else "llama")
    if kind == "Qwen BPE":  # Qwen's regex (digits one by one), named as llama.cpp's qwen2 pre-tokenizer
        assert src.value("tokenizer.ggml.pre") == "qwen2"

    # llama.cpp starts every SentencePiece fragment after a special token with a space (transformers' legacy
    # behaviour, which transformers 5 no longer has): a known difference of the runtimes, kept out of the text
    special = "<|im_end|>" if kind == "Qwen BPE" else "</s>"
    text = ROUND_TRIP_TEXT.replace("</s>", special) if byte_level else ROUND_TRIP_TEXT.replace("</s>", "")
    hf_tok = AutoTokenizer.from_pretrained(base)
    hf = hf_tok(text)["input_ids"]  # transformers' defaults: its own BOS rule, specials parsed
    llm = Llama(str(gguf_file), vocab_only=True, verbose=False)
    adds_bos = bool(src.value("tokenizer.ggml.add_bos_token", False))
    assert llm.tokenize(text.encode(), add_bos=adds_bos, special=True) == hf
    assert len(hf) > 20 and (hf[0] == 1) == (kind == "SentencePiece")
    if kind == "Qwen BPE":
        assert 2 in hf  # <|im_end|> as one control token by both
    # and back: control tokens are not printed
    plain = ROUND_TRIP_TEXT.replace("</s>", "")
    back = llm.detokenize(llm.tokenize(plain.encode(), add_bos=False, special=False)).decode()
    # SentencePiece's added prefix space comes back as a leading space from llama-cpp-python's detokenize
    assert (back if byte_level else back.removeprefix(" ")) == plain


def _without_tokenizer(base: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        (base / name).unlink(missing_ok=True)


def _foreign_pre_tokenizer(base: Path) -> None:
    tok = read_json(base / "tokenizer.json")
    tok["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"},
                                                                 {"type": "ByteLevel", "use_regex": False,
                                                                  "add_prefix_space": False, "trim_offsets": True}]}
    (base / "tokenizer.json").write_text(json.dumps(tok))


BAD = {
    "no tokenizer": ("llama", {}, _without_tokenizer, ["--method", "yarn", "--factor", "4"], "tokenizer"),
    "unknown pre-tokenizer": ("llama", {}, _foreign_pre_tokenizer, ["--method", "yarn", "--factor", "4"],
                              "pre-tokenizer"),
    "gemma with its own lm_head": ("gemma", {"tie_word_embeddings": False}, None, ["--method", "yarn", "--factor", "4"],
                                   "lm_head"),
    "mistral sliding window": ("mistral", {"sliding_window": 32}, None, ["--method", "yarn", "--factor", "4"],
                               "sliding window"),
    "activation llama.cpp does not compute": ("llama", {"hidden_act": "gelu"}, None,
                                              ["--method", "yarn", "--factor", "4"], "hidden_act"),
    "vocabulary larger than the embedding": ("llama", {"vocab_size": 300}, None, ["--method", "yarn", "--factor", "4"],
                                             "embedding rows"),
    "llama3 on qwen2 (no rope_freqs)": ("qwen2", {}, None, ["--method", "llama3", "--factor", "4"], "rope_freqs"),
    "qwen3 with an output-projection bias": ("qwen3", {"attention_bias": True}, None,
                                             ["--method", "yarn", "--factor", "4"], "attention_bias"),
    "olmo2 with a tied lm_head": ("olmo2", {"tie_word_embeddings": True}, None, ["--method", "yarn", "--factor", "4"],
                                  "output matrix"),
    "olmo2 with an output-projection bias": ("olmo2", {"attention_bias": True}, None,
                                             ["--method", "yarn", "--factor", "4"], "attention_bias"),
    "smollm3 with rope on every layer": ("smollm3", {"no_rope_layers": [1, 1, 1, 1]}, None,
                                         ["--method", "yarn", "--factor", "4"], "no_rope_layers"),
    "smollm3 with MLP biases": ("smollm3", {"mlp_bias": True}, None, ["--method", "yarn", "--factor", "4"],
                                "mlp_bias"),
    # --- qwen3_moe ---
    "qwen3_moe without top-k renormalization": ("qwen3_moe", {"norm_topk_prob": False}, None,
                                                ["--method", "yarn", "--factor", "4"], "norm_topk_prob"),
    "qwen3_moe with a dense layer": ("qwen3_moe", {"mlp_only_layers": [1]}, None, ["--method", "yarn", "--factor", "4"],
                                     "dense layers"),
    # --- end qwen3_moe ---
    # --- qwen2_moe ---
    "qwen2_moe with top-k renormalization": ("qwen2_moe", {"norm_topk_prob": True}, None,
                                             ["--method", "yarn", "--factor", "4"], "norm_topk_prob"),
    "qwen2_moe with head_dim ≠ hidden/heads": ("qwen2_moe", {"head_dim": 32}, None,
                                               ["--method", "yarn", "--factor", "4"], "head_dim"),
    # --- end qwen2_moe ---
    # --- mixtral ---
    "mixtral sliding window": ("mixtral", {"sliding_window": 32}, None, ["--method", "yarn", "--factor", "4"],
                               "sliding window"),
    # --- end mixtral ---
    "dynamic without --bake-at": ("llama", {}, None, ["--method", "dynamic", "--factor", "4"], "--bake-at"),
    "longrope below llama.cpp's 256-token step": ("llama", {}, None, ["--method", "longrope", "--factors", "LR",
                                                                     "--factor", "4"], "256"),
    "outtype unknown": ("llama", {}, None, ["--method", "yarn", "--factor", "4", "--outtype", "q9_k"], "outtype"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_conversions_exit_2_with_one_line_and_write_nothing(tmp_path, case, capsys):
    arch, overrides, damage, args, words = BAD[case]
    base = add_byte_level_tokenizer(make_tiny(tmp_path, arch, **overrides))
    if damage:
        damage(base)
    if "LR" in args:
        (tmp_path / "lr.json").write_text(json.dumps({"short_factor": [1.0] * 8, "long_factor": [4.0] * 8}))
        args = [str(tmp_path / "lr.json") if a == "LR" else a for a in args]
    out = tmp_path / "out"
    before = listing(tmp_path)
    capsys.readouterr()  # building the base printed transformers' progress
    line = assert_refused(capsys, run_cli("extend", base, *args, "--to", "gguf", "-o", out), out, before)
    assert words in line


# a dry run plans the GGUF without reading the token arrays, but checks the tokenizer as the conversion does
DRY_RUN_REFUSES = ["no tokenizer", "unknown pre-tokenizer", "activation llama.cpp does not compute", "outtype unknown"]


@pytest.mark.parametrize("case", DRY_RUN_REFUSES)
def test_a_dry_run_refuses_what_the_conversion_would(tmp_path, case, capsys):
    arch, overrides, damage, args, words = BAD[case]
    base = add_byte_level_tokenizer(make_tiny(tmp_path, arch, **overrides))
    if damage:
        damage(base)
    out = tmp_path / "out"
    before = listing(tmp_path)
    capsys.readouterr()
    line = assert_refused(capsys, run_cli("extend", base, *args, "--to", "gguf", "--dry-run", "-o", out), out, before)
    assert words in line


def test_a_dry_runs_gguf_plan_cannot_be_written(tmp_path):
    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.errors import RopeconvError
    from ropeconv.gguf_export.convert import GgufConversion

    base = add_byte_level_tokenizer(make_tiny(tmp_path, "llama"))
    ckpt = load_checkpoint(base)
    plan = methods.get("linear").plan(ckpt.scheme, ExtendRequest(factor=2.0))
    shown, full = plan_gguf(ckpt, plan, "f16", tokens=False), plan_gguf(ckpt, plan, "f16")
    assert not any(f.key == "tokenizer.ggml.tokens" for f in shown.fields)
    assert any(f.key == "tokenizer.ggml.tokens" for f in full.fields)
    # everything else is the same plan
    assert [f for f in full.fields if not f.key.startswith("tokenizer.")] == \
        [f for f in shown.fields if not f.key.startswith("tokenizer.")]
    assert shown.tensors == full.tensors
    with pytest.raises(RopeconvError, match="dry run"):
        GgufConversion(shown, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_rebase_replaces_a_carrier_scaling_and_drops_its_tensor(bases, tmp_path, capsys):
    """llama3 (a rope_freqs carrier) → --rebase yarn: the stale carrier goes, the new plan starts from the
    unscaled base the file records, and llama.cpp proves it against transformers loading the same GGUF."""
    first = tmp_path / "llama3"
    assert run_cli("extend", bases["llama"], "--method", "llama3", "--factor", "4", "--to", "gguf", "--outtype",
                   "f32", "--no-verify", "-o", first, "--json", "-q") == 0
    scaled = first / json.loads(capsys.readouterr().out)["files"][0]
    assert read_gguf(scaled).tensor("rope_freqs.weight") is not None
    out = tmp_path / "yarn.gguf"
    assert run_cli("extend", scaled, "--method", "yarn", "--factor", "2", "-o", out, "-q") == 2  # no --rebase
    assert run_cli("extend", scaled, "--method", "yarn", "--factor", "2", "--rebase", "--tokens",
                   str(2 * ORIGINAL_CTX), "-o", out, "--json", "-q") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parity"]["passed"] and result["plan"]["original_ctx"] == ORIGINAL_CTX
    rebased = read_gguf(out)
    assert rebased.tensor("rope_freqs.weight") is None
    assert rebased.value("llama.rope.scaling.type") == "yarn" and rebased.value("llama.context_length") == 2 * ORIGINAL_CTX

    # a GGUF whose carrier scaling records no original context (as llama.cpp's converter writes Llama-3.1)
    foreign = tmp_path / "foreign.gguf"
    rewrite_gguf(read_gguf(scaled), foreign, drop_keys={"ropeconv.plan", "ropeconv.base_path", "ropeconv.version"})
    capsys.readouterr()
    assert run_cli("extend", foreign, "--method", "yarn", "--factor", "2", "--rebase", "--no-verify",
                   "-o", tmp_path / "f.gguf") == 2
    assert "--original-ctx" in capsys.readouterr().err
    assert run_cli("extend", foreign, "--method", "yarn", "--factor", "2", "--rebase", "--original-ctx",
                   str(ORIGINAL_CTX), "--no-verify", "-o", tmp_path / "f.gguf", "-q") == 0
    assert read_gguf(tmp_path / "f.gguf").value("llama.context_length") == 2 * ORIGINAL_CTX


def test_smollm2_tokenizer_round_trip(tmp_path, capsys):
    """The real SmolLM2 tokenizer (49k byte-level BPE, chat specials) converted from its HF directory."""
    import os

    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from ropeconv.fixtures import smollm2

    work = Path(os.environ.get("ROPECONV_WORK", Path(__file__).resolve().parents[2] / "work"))
    base = smollm2.materialize_hf(work / "smollm2-135m")
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype", "q8_0",
                   "--no-verify", "-o", tmp_path / "out", "--json", "-q") == 0
    gguf_file = tmp_path / "out" / json.loads(capsys.readouterr().out)["files"][0]
    src = read_gguf(gguf_file)
    assert src.value("tokenizer.ggml.pre") == "gpt-2" and len(src.value("tokenizer.ggml.tokens")) == 49152
    assert src.value("tokenizer.chat_template") == AutoTokenizer.from_pretrained(base).chat_template
    text = "<|im_start|>user\nWhat's 12+30? Explain naïvely, in 東京 style 🚀<|im_end|>\n<|im_start|>assistant\n"
    hf = AutoTokenizer.from_pretrained(base)(text)["input_ids"]
    llm = Llama(str(gguf_file), vocab_only=True, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=bool(src.value("tokenizer.ggml.add_bos_token", False)),
                        special=True) == hf
    assert hf[0] == 1 and 2 in hf  # <|im_start|>, <|im_end|> parsed as single control tokens by both


def test_outtype_without_a_conversion_is_refused(bases, tmp_path, capsys):
    assert run_cli("extend", bases["llama"], "--method", "yarn", "--factor", "4", "--outtype", "q8_0",
                   "-o", tmp_path / "out") == 2  # safetensors only: nothing to apply it to
    assert "--outtype applies" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_float16_overflow_is_refused_not_written_as_inf(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    base = add_byte_level_tokenizer(make_tiny(tmp_path, "llama"))
    weights = load_file(base / "model.safetensors")
    weights["model.layers.0.mlp.down_proj.weight"][3, 5] = 1e6  # fine in float32 and bfloat16
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype", "f16",
                   "--no-verify", "-o", tmp_path / "out") == 2
    assert "float16's range" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert run_cli("extend", base, "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype", "bf16",
                   "--no-verify", "-o", tmp_path / "out", "-q") == 0
    assert torch.isfinite(weights["model.layers.0.mlp.down_proj.weight"]).all()


# GGUF architectures whose GGUFs transformers reads (the retrofit's reference), each retrofitted from a converted
# tiny model stripped of ropeconv's keys: what llama.cpp's own converter ships
RETROFIT = ["qwen3", "qwen3_moe", "qwen2_moe"]


def _foreign_gguf(base: Path, tmp_path: Path, arch: str, capsys) -> Path:
    """A plain f32 conversion of base with ropeconv's own keys removed: a GGUF as llama.cpp's converter ships it."""
    first = tmp_path / "plain"
    assert run_cli("extend", base, "--method", "none", "--to", "gguf", "--outtype", "f32", "--no-verify",
                   "-o", first, "--json", "-q") == 0
    converted = first / json.loads(capsys.readouterr().out)["files"][0]
    foreign = tmp_path / f"{arch}.gguf"
    rewrite_gguf(read_gguf(converted), foreign, drop_keys={"ropeconv.plan", "ropeconv.base_path", "ropeconv.version"})
    return foreign


@pytest.mark.parametrize("arch", RETROFIT)
def test_retrofit_of_a_foreign_gguf_keeps_its_tensors_and_proves_parity(bases, tmp_path, arch, capsys):
    foreign = _foreign_gguf(bases[arch], tmp_path, arch, capsys)
    out = tmp_path / "yarn.gguf"
    assert run_cli("extend", foreign, "--method", "yarn", "--factor", "4", "--tokens", str(4 * ORIGINAL_CTX),
                   "-o", out, "--json", "-q") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parity"]["passed"] and result["parity"]["runtime"] == "llama.cpp"
    assert result["parity"]["last_position"] >= 3 * ORIGINAL_CTX
    print(f"{arch} retrofit yarn ×4: max|Δlogit| {result['parity']['max_abs_logit']:.3g}")

    assert gguf_tensor_digests(out) == gguf_tensor_digests(foreign)  # every tensor byte kept
    meta = read_gguf(out)
    name = meta.value("general.architecture")  # qwen3_moe's is qwen3moe
    assert meta.value(f"{name}.rope.scaling.type") == "yarn"
    assert meta.value(f"{name}.context_length") == 4 * ORIGINAL_CTX

    stripped = strip_declaration(out)
    assert run_cli("verify", stripped, "--base", foreign, "--tokens", str(4 * ORIGINAL_CTX), "-q") == 1


@pytest.mark.parametrize("arch", ["olmo2", "smollm3", "mixtral"])
def test_gguf_retrofit_transformers_cannot_read_is_proven_against_its_hf_checkpoint(bases, tmp_path, arch, capsys):
    """transformers reads no olmo2 or smollm3 GGUF: a retrofit cannot build its reference from the file, so it is
    refused in one line unless --no-verify, and verify --base proves it against the HF checkpoint it came from."""
    foreign = _foreign_gguf(bases[arch], tmp_path, arch, capsys)
    out = tmp_path / "yarn.gguf"
    before = listing(tmp_path)
    assert_refused(capsys, run_cli("extend", foreign, "--method", "yarn", "--factor", "4", "-o", out), out, before,
                   mentions=(arch, "--no-verify"))
    assert run_cli("extend", foreign, "--method", "yarn", "--factor", "4", "--no-verify", "-o", out, "-q") == 0
    capsys.readouterr()
    assert run_cli("verify", out, "--base", bases[arch], "--tokens", str(4 * ORIGINAL_CTX), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["runtime"] == "llama.cpp" and report["last_position"] >= 3 * ORIGINAL_CTX
    print(f"{arch} retrofit yarn ×4 (verify --base HF): max|Δlogit| {report['max_abs_logit']:.3g}")

    stripped = strip_declaration(out)
    assert run_cli("verify", stripped, "--base", bases[arch], "--tokens", str(4 * ORIGINAL_CTX), "-q") == 1


def test_phi3_with_a_byte_level_bpe_loads_in_llama_cpp(tmp_path, capsys):
    """A Phi-4-style model (phi3 architecture, byte-level BPE without <unk>, <s>, </s>): llama.cpp applies Phi-3's
    token rules to any model named phi3 and then cannot load the vocabulary, so the name it gets avoids that; the
    GGUF loads, tokenizes as transformers does and is proven. Named phi3 again, the same file does not load."""
    from gguf import GGUFValueType
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from ropeconv.fixtures.tokenizers import PHI4_SPECIALS, add_byte_level_bpe

    base = add_byte_level_bpe(make_tiny(tmp_path, "phi3"), **PHI4_SPECIALS)  # folder tiny-phi3
    out = tmp_path / "out"
    assert run_cli("extend", base, "--method", "ntk", "--factor", "4", "--to", "gguf", "--outtype", "f32",
                   "--tokens", str(4 * ORIGINAL_CTX), "-o", out, "--json", "-q") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parity"]["passed"] and result["parity"]["runtime"] == "llama.cpp"
    print(f"phi3 byte-level BPE ntk ×4: max|Δlogit| {result['parity']['max_abs_logit']:.3g}")
    gguf_file = out / result["files"][0]
    src = read_gguf(gguf_file)
    assert src.value("general.name") == "tiny-phi 3" and src.value("tokenizer.ggml.model") == "gpt2"

    text = "<|im_start|>user\nThe lazy fox's 12345 naïve café 東京 🚀<|im_end|>"
    hf = AutoTokenizer.from_pretrained(base)(text)["input_ids"]
    llm = Llama(str(gguf_file), vocab_only=True, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=bool(src.value("tokenizer.ggml.add_bos_token", False)),
                        special=True) == hf and 3 in hf and 2 in hf
    del llm

    named = tmp_path / "named.gguf"
    rewrite_gguf(src, named, set_fields={"general.name": (GGUFValueType.STRING, "tiny-phi3")})
    capsys.readouterr()
    assert run_cli("verify", named, "--base", base, "--tokens", str(4 * ORIGINAL_CTX)) != 0
    assert "unordered_map::at" in capsys.readouterr().err

    before = listing(tmp_path)
    assert_refused(capsys, run_cli("extend", base, "--method", "ntk", "--factor", "4", "--to", "gguf", "--name",
                                   "Phi3-mini", "-o", tmp_path / "named-out"), tmp_path / "named-out", before,
                   mentions=("--name", "phi3"))


def test_a_base_deep_in_the_tree_is_recorded_and_verified(tmp_path, capsys):
    """ropeconv.base is a path: a GGUF base deeper than the 256-byte limit of llama.cpp's scalar keys still reads
    back, so verify of the retrofit finds its base without --base."""
    deep = tmp_path.joinpath(*(["d" * 60] * 5))
    base = add_byte_level_tokenizer(make_tiny(tmp_path, "llama"))
    assert run_cli("extend", base, "--method", "none", "--to", "gguf", "--outtype", "f32", "--no-verify", "-q",
                   "-o", deep) == 0
    [base_gguf] = deep.glob("*.gguf")
    assert len(str(base_gguf.resolve()).encode()) > 300
    out = tmp_path / "out.gguf"
    assert run_cli("extend", base_gguf, "--method", "yarn", "--factor", "4", "--no-verify", "-q", "-o", out) == 0
    capsys.readouterr()
    assert run_cli("verify", out, "--tokens", 2 * ORIGINAL_CTX, "-q") == 0, capsys.readouterr().err
