"""ONNX export of ALiBi (BLOOM, MPT) and learned-table (GPT-2, OPT) models: every family × method runs in
onnxruntime with the plan's position math, through its KV cache, beyond the original context; and verify
fails once the math is taken out of the graph (slopes unscaled, or the table left at its base rows)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from ropeconv import methods
from ropeconv.capabilities import family_cells
from ropeconv.families import FAMILIES as REGISTRY
from ropeconv.onnx_export import alibi as onnx_alibi
from ropeconv.parity.runtimes import ort as ort_runtime
from ropeconv.positions import plan_from_json
from tests.conftest import ORIGINAL_CTX, assert_refused, listing, make_tiny, read_json, run_cli

TOKENS = 4 * ORIGINAL_CTX
MAX_ABS_LOGIT = 1e-3  # float32 kernels against transformers; measured ≤ 3e-5 on these models

# Tiny random models in each family's own config keys (conftest.TINY holds the RoPE families). 4 heads, and
# 6 / 12 heads where ALiBi's slopes for a head count that is not a power of two are interleaved.
# initializer_range 0.2 (OPT: init_std) gives logits of unit scale, so a wrong position visibly moves them.
FAMILIES = {
    "bloom": ("bloom", dict(hidden_size=64, n_layer=2, n_head=4, seq_length=ORIGINAL_CTX, initializer_range=0.2)),
    "bloom6": ("bloom", dict(hidden_size=48, n_layer=2, n_head=6, seq_length=ORIGINAL_CTX, initializer_range=0.2)),
    "mpt": ("mpt", dict(d_model=64, n_layers=2, n_heads=4, max_seq_len=ORIGINAL_CTX, initializer_range=0.2)),
    "mpt12": ("mpt", dict(d_model=96, n_layers=2, n_heads=12, max_seq_len=ORIGINAL_CTX, initializer_range=0.2)),
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=ORIGINAL_CTX, initializer_range=0.2)),
    "opt": ("opt", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                        max_position_embeddings=ORIGINAL_CTX, word_embed_proj_dim=64, init_std=0.2)),
}


def make_base(root: Path, family: str, *, name: str | None = None, **overrides) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, kwargs = FAMILIES[family]
    config = AutoConfig.for_model(model_type, vocab_size=512, bos_token_id=1, eos_token_id=2,
                                  **dict(kwargs, **overrides))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    out = root / (name or family)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    built = {family: make_base(root, family) for family in FAMILIES}
    # a family with no entry above runs on its family file's tiny config
    return built | {family: make_tiny(root, family) for family, _ in CELLS if family not in built}


def method_args(variant: str) -> list[str]:
    """"alibi-dynamic" → --method alibi --dynamic --factor 4 (a method, then one of its switches)."""
    method, _, switch = variant.partition("-")
    return ["--method", method] + ([f"--{switch.replace('_', '-')}"] if switch else []) + \
        ([] if method == "none" else ["--factor", "4"])


def model_type_of(family: str) -> str:
    return FAMILIES[family][0] if family in FAMILIES else family


def tokens_for(family: str, method: str) -> int:
    # no extension: the target is the original context, and probes stay within the target (transformers' MPT
    # builds its bias max_seq_len long and a learned table has no row past it)
    return ORIGINAL_CTX if method == "none" else TOKENS


def extend(base: Path, out: Path, method: str, tokens: int, *extra: str) -> int:
    return run_cli("extend", base, *method_args(method), "--to", "onnx", "-o", out, "--tokens", tokens, "-q", *extra)


def model_path(out: Path) -> Path:
    return out / "onnx" / "model.onnx"


def _replace_initializers(path: Path, values: dict[str, np.ndarray]) -> None:
    model = onnx.load(path)
    changed = 0
    for init in model.graph.initializer:
        if init.name in values:
            dtype = numpy_helper.to_array(init).dtype
            init.CopyFrom(numpy_helper.from_array(np.asarray(values[init.name], dtype=dtype), init.name))
            changed += 1
    assert changed, f"none of {sorted(values)} in the graph"
    onnx.save_model(model, path)


def strip_position_math(out: Path, base: Path) -> None:
    """Take the extension out of the graph: ALiBi slopes unscaled at every length (alibi/scale 1, the
    proportional rule's L infinite), or the table's base rows followed by repeats of its last row (what an
    exporter that only pads the table ships)."""
    plan = plan_from_json(read_json(out / "manifest.json")["plan"])
    if plan.kind == "alibi":
        _replace_initializers(model_path(out), onnx_alibi.default_constants())
        return
    from safetensors.numpy import load_file

    table = load_file(base / "model.safetensors")[plan.table]
    padded = np.concatenate([table, np.repeat(table[-1:], plan.target_ctx - plan.original_ctx, axis=0)])
    _replace_initializers(model_path(out), {plan.table: padded})


# every (family, method) the matrix claims for ONNX on ALiBi and learned-table families, with each switch of the
# method (alibi --dynamic), then the slope orders of 6 and 12 heads
CELLS = [(f, variant) for f, m in family_cells("onnx") if REGISTRY[f].position in ("alibi", "absolute")
         for variant in [m] + [f"{m}-{o.name}" for o in methods.get(m).OPTIONS if o.kind is bool]] + [
    ("bloom6", "alibi"), ("mpt12", "alibi-dynamic"),
]


@pytest.mark.parametrize("family,method", CELLS)
def test_onnx_matches_transformers_and_fails_without_the_position_math(bases, tmp_path, family, method, capsys):
    out, tokens = tmp_path / "out", tokens_for(family, method)
    capsys.readouterr()
    assert extend(bases[family], out, method, tokens, "--json") == 0
    report = json.loads(capsys.readouterr().out)["parity"]
    print(f"{family} × {method}: max|Δlogit| {report['max_abs_logit']:.3g} over {report['tokens']} tokens")
    assert report["passed"] and report["runtime"] == "onnxruntime"
    assert report["max_abs_logit"] < MAX_ABS_LOGIT
    assert report["last_position"] == tokens - 1
    assert read_json(out / "manifest.json")["parity"]["onnx"]["passed"] is True
    path = model_path(out)
    onnx.checker.check_model(str(path), full_check=True)
    inputs = {i.name for i in onnx.load(path, load_external_data=False).graph.input}
    # ALiBi graphs take no positions (their bias comes from attention_mask), as optimum's BLOOM export
    assert ("position_ids" in inputs) == (REGISTRY[model_type_of(family)].position == "absolute")
    assert not (out / "onnx" / "genai_config.json").exists()  # onnxruntime-genai has no such model type
    if method == "none":
        return  # nothing to take out

    strip_position_math(out, bases[family])
    assert run_cli("verify", path, "--tokens", tokens) == 1


def test_the_table_is_the_resampled_one_and_the_slopes_are_the_base_ones(bases, tmp_path):
    """What the graph holds: the base slopes (the divisor is separate, so the declaration is readable) and
    the plan's table, float32, with OPT's two leading rows as they were."""
    from safetensors.numpy import load_file

    from ropeconv.positions.absolute import resample_table
    from ropeconv.positions.alibi import base_slopes

    out = tmp_path / "bloom"
    assert extend(bases["bloom6"], out, "alibi", TOKENS, "--no-verify") == 0
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(model_path(out)).graph.initializer}
    assert np.array_equal(inits[onnx_alibi.SLOPES], base_slopes(6).astype(np.float32))
    assert inits[onnx_alibi.SCALE] == np.float32(4.0)

    out = tmp_path / "opt"
    assert extend(bases["opt"], out, "absolute", TOKENS, "--no-verify") == 0
    plan = plan_from_json(read_json(out / "manifest.json")["plan"])
    table = onnx.load(model_path(out)).graph.initializer
    stored = next(numpy_helper.to_array(i) for i in table if i.name == plan.table)
    base = load_file(bases["opt"] / "model.safetensors")[plan.table]
    assert stored.shape == (2 + 4 * ORIGINAL_CTX, 64) and stored.dtype == np.float32
    assert np.array_equal(stored, resample_table(base, plan).astype(np.float32))
    assert np.array_equal(stored[:2], base[:2]) and np.array_equal(stored[-1], base[-1])
    manifest = read_json(out / "manifest.json")
    assert "resampled to 256 positions" in manifest["formats"]["onnx"]["position_math"]


def _decoder(bases, tmp_path: Path, family: str, method: str) -> ort_runtime.Decoder:
    out = tmp_path / "out"
    assert extend(bases[family], out, method, TOKENS, "--no-verify") == 0
    return ort_runtime.Decoder(ort_runtime.session(model_path(out)))


def _probe(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(16, 512, (1, n), generator=torch.Generator().manual_seed(3)), torch.arange(n)[None]


@pytest.mark.parametrize("family,method", [("bloom", "alibi"), ("mpt12", "alibi"), ("gpt2", "absolute"),
                                           ("opt", "absolute")])
def test_decoding_through_the_cache_equals_a_full_prefill(bases, tmp_path, family, method):
    """Static rules: the bias (from the mask, or the cache index) and the table rows (from position_ids) of
    cached keys are the ones a full prefill gives them."""
    decoder = _decoder(bases, tmp_path, family, method)
    ids, positions = _probe(3 * ORIGINAL_CTX)
    full = ort_runtime.decode(decoder, ids, positions, 0)
    stepped = ort_runtime.decode(decoder, ids, positions, 16)
    assert (full - stepped).abs().max().item() < 1e-4
    alone = ort_runtime.decode(decoder, ids[:, -1:], positions[:, -1:], 0)  # the cache is really used
    assert (alone[0] - full[-1]).abs().max().item() > 1e-2


@pytest.mark.parametrize("family", ["bloom", "mpt"])
def test_proportional_divisor_follows_each_calls_keys_in_view(bases, tmp_path, family):
    """--dynamic divides by max(1, keys in view / original) of each call (past + new tokens): below, at 2× and
    at 4× the original context, a prefill then decode steps match transformers under the plan (the cache's keys
    and values were computed with the divisor of the call that wrote them, on both sides); a divisor frozen at
    any one length would miss the others, and a full prefill (one divisor for every row) differs."""
    from ropeconv.parity.reference import load_reference
    from ropeconv.parity.runtimes.hf import logits as hf_logits

    out = tmp_path / "out"
    assert extend(bases[family], out, "alibi-dynamic", TOKENS, "--no-verify") == 0
    plan = plan_from_json(read_json(out / "manifest.json")["plan"])
    decoder = ort_runtime.Decoder(ort_runtime.session(model_path(out)))
    model = load_reference(bases[family], plan, torch.device("cpu"))
    for n in (ORIGINAL_CTX // 2, 2 * ORIGINAL_CTX, 4 * ORIGINAL_CTX):
        ids, positions = _probe(n)
        ours = ort_runtime.decode(decoder, ids, positions, 4)
        assert (ours - hf_logits(model, ids, positions, 4)).abs().max().item() < MAX_ABS_LOGIT, n
    full = ort_runtime.decode(decoder, ids, positions, 0)
    assert (ours[-4] - full[-4]).abs().max().item() > 1e-3


@pytest.mark.parametrize("family,method", [("bloom", "alibi-dynamic"), ("bloom6", "alibi"), ("mpt", "alibi-dynamic")])
def test_left_padded_batch_matches_transformers(bases, tmp_path, family, method):
    """A batch with a left-padded row: BLOOM's key positions from cumsum(attention_mask), MPT's cache index
    (padding counted, as transformers counts it), and the proportional divisor from the mask's length (padding
    included, as ropeconv.runtime reads it)."""
    from ropeconv.parity.reference import load_reference

    out = tmp_path / "out"
    assert extend(bases[family], out, method, TOKENS, "--no-verify") == 0
    plan = plan_from_json(read_json(out / "manifest.json")["plan"])
    sess = ort_runtime.session(model_path(out))
    n, pad = 2 * ORIGINAL_CTX, 7
    ids = torch.randint(16, 512, (2, n), generator=torch.Generator().manual_seed(5))
    ids[1, :pad] = 0
    mask = torch.ones(2, n, dtype=torch.int64)
    mask[1, :pad] = 0
    past = {i.name: np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32)
            for i in sess.get_inputs() if i.name.startswith("past_key_values.")}
    ours = sess.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), **past})[0]
    model = load_reference(bases[family], plan, torch.device("cpu"))
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits.numpy()
    assert np.abs(ours[0] - reference[0]).max() < MAX_ABS_LOGIT
    assert np.abs(ours[1, pad:] - reference[1, pad:]).max() < MAX_ABS_LOGIT
    if family.startswith("bloom") and plan.length_rule.value == "static":
        # BLOOM's positions start at the first real token: the padded row is the unpadded sequence
        alone = sess.run(["logits"], {"input_ids": ids[1:, pad:].numpy(), "attention_mask": mask[1:, pad:].numpy(),
                                      **{k: v[:1] for k, v in past.items()}})[0]
        assert np.abs(ours[1, pad:] - alone[0]).max() < 1e-4


# switches in each family's config the graph computes: case → (family, method, config overrides)
VARIANTS = {
    "bloom residual after the norm": ("bloom", "alibi", dict(apply_residual_connection_post_layernorm=True)),
    "mpt clip_qkv": ("mpt", "alibi", dict(attn_config=dict(clip_qkv=0.25))),
    "gpt2 scale by inverse layer index, untied": (
        "gpt2", "absolute", dict(scale_attn_by_inverse_layer_idx=True, tie_word_embeddings=False)),
    "opt 350m post-norm with project_in/out": ("opt", "absolute", dict(do_layer_norm_before=False,
                                                                       word_embed_proj_dim=32)),
}


@pytest.mark.parametrize("case", list(VARIANTS))
def test_config_variants(tmp_path, case, capsys):
    family, method, overrides = VARIANTS[case]
    base = make_base(tmp_path, family, **overrides)
    capsys.readouterr()
    assert extend(base, tmp_path / "out", method, TOKENS, "--json") == 0
    report = json.loads(capsys.readouterr().out)["parity"]
    print(f"{case}: max|Δlogit| {report['max_abs_logit']:.3g}")
    assert report["passed"] and report["max_abs_logit"] < MAX_ABS_LOGIT


def test_checkpoints_saved_without_the_model_prefix(tmp_path):
    """openai-community/gpt2 and facebook/opt-* store "wte.weight", "decoder.layers.0…": no "transformer." /
    "model." in front."""
    from safetensors.torch import load_file, save_file

    for family, prefix in (("gpt2", "transformer."), ("opt", "model.")):
        base = make_base(tmp_path, family)
        tensors = load_file(base / "model.safetensors")
        save_file({k.removeprefix(prefix): v for k, v in tensors.items()}, base / "model.safetensors",
                  metadata={"format": "pt"})
        out = tmp_path / f"out-{family}"
        assert extend(base, out, "absolute", TOKENS) == 0
        assert not read_json(out / "manifest.json")["plan"]["table"].startswith(prefix)


def test_fp16_table_judged_through_a_float32_twin(bases, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    assert extend(bases["gpt2"], out, "absolute", TOKENS, "--dtype", "fp16", "--json") == 0
    report = json.loads(capsys.readouterr().out)["parity"]
    assert report["passed"] and {"probe", "q-probe"} <= {b["pass_name"] for b in report["bands"]}
    table = next(i for i in onnx.load(model_path(out)).graph.initializer if i.name == "transformer.wpe.weight")
    assert table.data_type == onnx.TensorProto.FLOAT16 and list(table.dims) == [4 * ORIGINAL_CTX, 64]


def _mpt_with_biases(tmp_path: Path) -> Path:
    from safetensors.torch import load_file, save_file

    base = make_base(tmp_path, "mpt", name="mpt-bias")
    tensors = load_file(base / "model.safetensors")
    tensors["transformer.blocks.0.attn.out_proj.bias"] = torch.zeros(64)
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    return base


ALIBI = ["--method", "alibi", "--factor", "4"]
# case: (how to make the base, the arguments, a word the one error line must contain)
BAD = {
    "mpt qk_ln": (lambda t: make_base(t, "mpt", attn_config=dict(qk_ln=True)), ALIBI, "qk_ln"),
    "mpt logit_scale": (lambda t: make_base(t, "mpt", logit_scale="inv_sqrt_d_model"), ALIBI, "logit_scale"),
    "mpt bias tensors": (_mpt_with_biases, ALIBI, "bias"),
    "opt LayerNorms without weights": (lambda t: make_base(t, "opt", layer_norm_elementwise_affine=False),
                                       ["--method", "absolute", "--factor", "4"], "elementwise_affine"),
    "gpt2 activation": (lambda t: make_base(t, "gpt2", activation_function="mish"),
                        ["--method", "absolute", "--factor", "4"], "mish"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_refused_configs_exit_2_with_one_line_and_write_nothing(tmp_path, case, capsys):
    make, args, word = BAD[case]
    base = make(tmp_path)
    out = tmp_path / "out"
    before = listing(tmp_path)
    capsys.readouterr()
    rc = run_cli("extend", base, *args, "--to", "onnx", "-o", out)
    assert_refused(capsys, rc, out, before, mentions=(word,))
