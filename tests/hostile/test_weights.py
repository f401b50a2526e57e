"""Hostile weights: safetensors headers read at least as strictly as safetensors' own loader (lies about sizes,
truncation, malformed and non-finite header values), non-finite weights refused by tensor name while they stream,
each family's tensor table against what transformers writes, non-regular weight files refused before they block,
pickles only on the user's word (extend, inspect, verify), LoRA adapter numbers and patterns read strictly, the
weight files chosen as transformers chooses them, and a seeded mutation fuzz of config.json and the safetensors
header (fuzz_worker.py).

The contract for every refusal: exit 2, exactly one `ropeconv: error:` line on stderr, no traceback, nothing
left beside the target (tests.conftest.assert_refused), and every file of the base byte-identical.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ropeconv.checkpoint import load_checkpoint
from ropeconv.checkpoint.safetensors_header import read_header
from ropeconv.checkpoint.shapes import ALWAYS, SHAPES
from ropeconv.checkpoint.sources import SafetensorsSource
from ropeconv.errors import InputError
from ropeconv.lora import read_adapter
from tests.conftest import (
    ORIGINAL_CTX,
    TINY,
    add_byte_level_tokenizer,
    assert_refused,
    listing,
    make_tiny,
    read_json,
    run_cli,
)
from tests.hostile.conftest import (
    cli,
    edit_config,
    error_line,
    extend,
    extend_args,
    extend_yarn,
    first_2d_tensor,
    fuzz,
    header_of,
    no_hang,
    one_line,
    refused,
    refused_in_place,
    rewrite_header,
    snapshot,
    to_pickle,
    write_header,
)

# ----------------------------------------------------------------------------- 1: safetensors headers


A = torch.arange(4, dtype=torch.float32).reshape(2, 2) + 0.5  # 16 bytes


B = torch.tensor([1.25, -2.5, 3.75])  # 12 bytes


C = torch.arange(4, dtype=torch.bfloat16)  # 8 bytes


DATA = b"".join(t.contiguous().view(torch.uint8).numpy().tobytes() for t in (A, B, C))


def _header(**changes) -> dict:
    header = {"__metadata__": {"format": "pt"},
              "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [3], "data_offsets": [16, 28]},
              "c": {"dtype": "BF16", "shape": [4], "data_offsets": [28, 36]}}
    header.update(changes)
    return header


def _file(header, data: bytes = DATA, *, pad: int = 8, length_delta: int = 0, prefix: bytes = b"") -> bytes:
    text = prefix + (header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode())
    text += b" " * (pad + (-len(text) % 8))  # padding spaces, as the writers pad the data area's start
    return struct.pack("<Q", len(text) + length_delta) + text + data


# each one a file safetensors' loader refuses (checked below, against the installed loader)
LOADER_REFUSES = {
    "length-one-short": lambda: _file(_header(), length_delta=-1),  # JSON still parses: the data shifts by a byte
    "length-one-long": lambda: _file(_header(), length_delta=+1),
    "hole-between": lambda: _file(_header(c={"dtype": "BF16", "shape": [4], "data_offsets": [32, 40]}),
                                  DATA[:28] + b"\0" * 4 + DATA[28:]),
    "hole-at-start": lambda: _file(_header(a={"dtype": "F32", "shape": [2, 2], "data_offsets": [4, 20]},
                                           b={"dtype": "F32", "shape": [3], "data_offsets": [20, 32]},
                                           c={"dtype": "BF16", "shape": [4], "data_offsets": [32, 40]}),
                                   b"\0" * 4 + DATA),
    "trailing-bytes": lambda: _file(_header(), DATA + b"\0" * 8),
    "sparse-extended": lambda: _file(_header(), DATA + b"\0" * 65536),  # what truncate() to a larger size leaves
    "utf8-bom": lambda: _file(_header(), prefix=b"\xef\xbb\xbf"),
    "utf16-header": lambda: _file(json.dumps(_header()).encode("utf-16-le")),  # Python's json.loads(bytes) reads it
    "overlap": lambda: _file(_header(b={"dtype": "F32", "shape": [3], "data_offsets": [12, 24]},
                                     c={"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]}), DATA[:32]),
    "reversed-offsets": lambda: _file(_header(c={"dtype": "BF16", "shape": [4], "data_offsets": [36, 28]})),
    "metadata-a-list": lambda: _file(_header(__metadata__=[])),
    "metadata-false": lambda: _file(_header(__metadata__=False)),
    "shape-overflows-u64": lambda: _file(_header(z={"dtype": "F32", "shape": [2**63, 4, 0],
                                                    "data_offsets": [36, 36]})),
    "not-utf8": lambda: _file(json.dumps(_header()).encode()[:-1] + b'\xff}'),
    "truncated": lambda: _file(_header(), DATA[:30]),
}


def _loader_reads(path: Path) -> dict[str, torch.Tensor] | None:
    try:
        with safe_open(path, "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError):
        return None


@pytest.mark.parametrize("case", sorted(LOADER_REFUSES))
def test_header_refused_wherever_the_loader_refuses(tmp_path, case):
    path = tmp_path / "model.safetensors"
    path.write_bytes(LOADER_REFUSES[case]())
    assert _loader_reads(path) is None, f"the installed safetensors reads {case}: not a refusal case"
    with pytest.raises(InputError) as exc:
        read_header(path)
    error_line(exc, str(path))


@pytest.mark.parametrize("case", ["plain", "names-out-of-offset-order", "empty-tensor-last", "metadata-null"])
def test_header_accepted_reads_what_the_loader_reads(tmp_path, case):
    header = _header()
    if case == "names-out-of-offset-order":
        header = {"c": header["c"], "a": header["a"], "b": header["b"]}
    elif case == "empty-tensor-last":
        header["e"] = {"dtype": "F32", "shape": [0, 5], "data_offsets": [36, 36]}
    elif case == "metadata-null":
        header["__metadata__"] = None
    path = tmp_path / "model.safetensors"
    path.write_bytes(_file(header))
    loader = _loader_reads(path)
    assert loader is not None
    entries, _ = read_header(path)
    source = SafetensorsSource()
    try:
        ours = {e.name: source.load(e) for e in entries}
    finally:
        source.close()
    assert set(ours) == set(loader)
    for name, tensor in loader.items():
        assert torch.equal(ours[name], tensor), name
    assert torch.equal(ours["b"], B)  # and both are the tensors written, not a shifted copy


def test_leading_blank_before_the_header_refused(tmp_path):
    """The format's spec: the header MUST begin with '{' (this loader version still skips a blank; Python's json
    skips any whitespace and a BOM)."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(_file(_header(), prefix=b" "))
    with pytest.raises(InputError) as exc:
        read_header(path)
    error_line(exc, "start with '{'")


def _shift_header_one_byte_short(weights: Path) -> None:
    raw = weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    text = raw[8 : 8 + n].rstrip(b" ") + b" " * 8  # at least one padding space to lose
    text += b" " * (-len(text) % 8)
    weights.write_bytes(struct.pack("<Q", len(text) - 1) + text + raw[8 + n :])


@pytest.mark.parametrize("verify", [False, True], ids=["no-verify", "verify"])
def test_header_one_byte_short_refused_by_extend(capsys, base, out, verify):
    """Before: exit 0 under --no-verify with every published tensor shifted by a byte (0.104 → -3.3e12); with
    verify a SafetensorError traceback."""
    _shift_header_one_byte_short(base / "model.safetensors")
    before, parent = snapshot(base), listing(out.parent)
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "2", *([] if verify else ["--no-verify"]), "-q",
                 "-o", out)
    refused(capsys, rc, base, before, out, parent, "model.safetensors", "left over")


# ----------------------------------------------------------------------------- 2: non-finite weights


def _poison(weights: Path, name: str, value: float) -> None:
    """value at the last row of `name` (an embedding row a short parity probe never reads)."""
    tensors = load_file(weights)
    tensors[name][-1, 3] = value
    save_file(tensors, weights, metadata={"format": "pt"})


@pytest.mark.parametrize("to,extra", [
    ("safetensors", ()),  # the kernel byte copy
    ("gguf", ("--outtype", "f16")),  # the numpy cast path
    ("gguf", ("--outtype", "f32")),  # the GGUF byte copy of an F32 tensor
], ids=["safetensors-copy", "gguf-numpy-cast", "gguf-copy"])
def test_non_finite_weight_refused_while_streaming(capsys, base, out, to, extra):
    """Before: NaN in an embedding row the probe never reads was published with parity on (exit 0)."""
    add_byte_level_tokenizer(base)
    _poison(base / "model.safetensors", "model.embed_tokens.weight", math.nan)
    before, parent = snapshot(base), listing(out.parent)
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "2", "--to", to, *extra, "-q", "-o", out)
    line = refused(capsys, rc, base, before, out, parent, "model.embed_tokens.weight", "NaN")
    assert "element [511, 3]" in line


# ----------------------------------------------------------------------------- 3: LoRA adapters


def make_adapter(base: Path, folder: Path, config: dict | bytes, scale_a: float = 0.01, rope=None) -> Path:
    """A PEFT-layout adapter on layer 0's q_proj (rank 2), built by hand: A and B filled with scale_a."""
    folder.mkdir()
    q = load_file(base / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{key}.lora_A.weight": torch.full((2, q.shape[1]), scale_a),
               f"{key}.lora_B.weight": torch.full((q.shape[0], 2), scale_a)}, folder / "adapter_model.safetensors")
    if isinstance(config, dict):
        config = json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, **config}).encode()
    (folder / "adapter_config.json").write_bytes(config)
    if rope is not None:
        (folder / "ropeconv_rope.json").write_text(json.dumps(rope))
    return folder


BAD_ADAPTERS = {
    "alpha-string-nan": ({"lora_alpha": "nan"}, "lora_alpha must be a finite number"),
    "alpha-string-inf": ({"lora_alpha": "inf"}, "lora_alpha must be a finite number"),
    "alpha-string-1e309": ({"lora_alpha": "1e309"}, "lora_alpha must be a finite number"),
    "alpha-string-number": ({"lora_alpha": "16"}, "lora_alpha"),  # peft computes "16" / r: a TypeError there
    "alpha-1e308-scale-overflows": ({"lora_alpha": 1e308}, "scale"),
    "alpha-huge-integer": (b'{"peft_type": "LORA", "r": 2, "lora_alpha": 1' + b"0" * 400 + b"}",
                           "lora_alpha must be a finite number"),
    "alpha-pattern-nan": ({"alpha_pattern": {"q_proj": "nan"}}, "alpha_pattern"),
    "alpha-pattern-list-value": ({"alpha_pattern": {"q_proj": [8]}}, "alpha_pattern"),
    "alpha-pattern-a-list": ({"alpha_pattern": ["q_proj"]}, "alpha_pattern"),
    "rank-pattern-bad-regex": ({"rank_pattern": {"q_proj(": 4}}, "regular expression"),
    "rank-pattern-a-list": ({"rank_pattern": [["q_proj", 4]]}, "rank_pattern"),
    "rank-pattern-string": ({"rank_pattern": {"q_proj": "two"}}, "rank_pattern"),
    "rank-zero": ({"r": 0}, "positive integer"),
    "rank-float": ({"r": 2.5}, "positive integer"),
    "rslora-string": ({"use_rslora": "false"}, "use_rslora"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_bad_adapter_numbers_and_patterns_refused(tiny_llama, tmp_path, case):
    config, mention = BAD_ADAPTERS[case]
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", config)
    with pytest.raises(InputError) as exc:
        read_adapter(adapter)
    error_line(exc, mention)


@pytest.mark.parametrize("rope", [["yarn", 2], {"method": "yarn", "params": [1]}, {"method": "yarn", "factor": "x"}],
                         ids=["a-list", "params-a-list", "factor-a-string"])
def test_bad_rope_record_refused(tiny_llama, tmp_path, rope):
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", {}, rope=rope)
    with pytest.raises(InputError) as exc:
        read_adapter(adapter)
    error_line(exc, "ropeconv_rope.json")


def test_adapter_pattern_matches_as_peft_does(tiny_llama, tmp_path):
    """peft matches (.*\\.)?(KEY)$: an alternation applies to the whole module name's tail."""
    from peft.utils.other import get_pattern_key

    adapter = read_adapter(make_adapter(tiny_llama, tmp_path / "adapter", {"alpha_pattern": {"k_proj|q_proj": 6}}))
    module = adapter.modules[0]
    assert get_pattern_key(["k_proj|q_proj"], module.module) == "k_proj|q_proj"
    assert module.alpha == 6.0


@pytest.mark.parametrize("config", [{"lora_alpha": "nan"}, {"alpha_pattern": {"q_proj": "inf"}}],
                         ids=["lora_alpha", "alpha_pattern"])
def test_non_finite_alpha_refused_by_extend(capsys, base, out, tmp_path, config):
    """Before: exit 0 under --no-verify, the merged q_proj all NaN."""
    adapter = make_adapter(base, tmp_path / "adapter", config)
    before, parent = snapshot(base), listing(out.parent)
    rc = run_cli("extend", base, "--lora", adapter, "--force-method", "--method", "yarn", "--factor", "2",
                 "--no-verify", "-q", "-o", out)
    refused(capsys, rc, base, before, out, parent, "must be a finite number")


def test_merge_that_overflows_refused_by_tensor_name(capsys, base, out, tmp_path):
    """Finite factors whose product overflows float32 (1e20 · 1e20 · 2): the merged tensor is checked as it
    streams (the in-memory path every writer reads a merged tensor from)."""
    adapter = make_adapter(base, tmp_path / "adapter", {"lora_alpha": 2}, scale_a=1e20)
    before, parent = snapshot(base), listing(out.parent)
    rc = run_cli("extend", base, "--lora", adapter, "--force-method", "--method", "yarn", "--factor", "2",
                 "--no-verify", "-q", "-o", out)
    refused(capsys, rc, base, before, out, parent, "model.layers.0.self_attn.q_proj.weight", "LoRA merged", "inf")


def test_merge_into_a_gguf_base_that_overflows_refused(capsys, tiny_llama, tmp_path):
    """The same merge into an F32 GGUF base (the retrofit path, which rewrites the file without the streaming
    loop): refused by its GGUF tensor name."""
    base_dir = add_byte_level_tokenizer(Path(shutil.copytree(tiny_llama, tmp_path / "hf")))
    assert run_cli("extend", base_dir, "--method", "none", "--to", "gguf", "--outtype", "f32", "--no-verify", "-q",
                   "-o", tmp_path / "g") == 0
    gguf_base = next((tmp_path / "g").glob("*.gguf"))
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", {"lora_alpha": 2}, scale_a=1e20)
    out = tmp_path / "outputs" / "out.gguf"
    out.parent.mkdir()
    before, parent = snapshot(gguf_base.parent), listing(out.parent)
    rc = run_cli("extend", gguf_base, "--lora", adapter, "--force-method", "--method", "yarn", "--factor", "2",
                 "--no-verify", "-q", "-o", out)
    refused(capsys, rc, gguf_base.parent, before, out, parent, "blk.0.attn_q.weight", "LoRA merged", "inf")


def test_non_finite_weight_of_a_gguf_base_refused(capsys, tiny_llama, tmp_path):
    """A GGUF base's float tensors are copied byte for byte by the retrofit (no streaming loop): before, a NaN in an
    F32 GGUF's embedding row the probe never reads was published with parity on."""
    from ropeconv.gguf_io.reader import read_gguf

    base_dir = add_byte_level_tokenizer(Path(shutil.copytree(tiny_llama, tmp_path / "hf")))
    assert run_cli("extend", base_dir, "--method", "none", "--to", "gguf", "--outtype", "f32", "--no-verify", "-q",
                   "-o", tmp_path / "g") == 0
    gguf_base = next((tmp_path / "g").glob("*.gguf"))
    embd = read_gguf(gguf_base).tensor("token_embd.weight")
    rows, cols = embd.torch_shape
    with open(gguf_base, "r+b") as fh:  # element [rows-1, 3] set to NaN, as _poison does for safetensors
        fh.seek(embd.offset + ((rows - 1) * cols + 3) * 4)
        fh.write(struct.pack("<f", math.nan))
    out = tmp_path / "outputs" / "out.gguf"
    out.parent.mkdir()
    before, parent = snapshot(gguf_base.parent), listing(out.parent)
    rc = run_cli("extend", gguf_base, "--method", "yarn", "--factor", "2", "-q", "-o", out)
    line = refused(capsys, rc, gguf_base.parent, before, out, parent, "token_embd.weight", "NaN")
    assert f"element [{rows - 1}, 3]" in line


# ----------------------------------------------------------------------------- 5: which weight files


def _transformers_files(folder: Path) -> list[str]:
    """The files transformers' from_pretrained resolves for a local folder (its own rule, modeling_utils)."""
    from transformers.modeling_utils import _get_resolved_checkpoint_files

    files, _ = _get_resolved_checkpoint_files(str(folder), variant=None, gguf_file=None, use_safetensors=None,
                                              user_agent={}, is_remote_code=False)
    return sorted(Path(f).name for f in files)


def _ropeconv_files(folder: Path) -> list[str]:
    return sorted({t.file.name for t in load_checkpoint(folder).tensors})


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("sharded"), "llama", max_shard_size="200KB")


def test_weight_files_are_the_ones_transformers_loads(tiny_llama, sharded, tmp_path):
    single = Path(shutil.copytree(tiny_llama, tmp_path / "single"))
    save_file({"extra.weight": torch.zeros(3, 3)}, single / "stray.safetensors")  # not loaded by transformers
    indexed = Path(shutil.copytree(sharded, tmp_path / "indexed"))
    save_file({"extra.weight": torch.zeros(3, 3)}, indexed / "consolidated.safetensors")
    index_of_single = Path(shutil.copytree(tiny_llama, tmp_path / "index-of-single"))
    names = [k for k in json.loads(_header_text(index_of_single / "model.safetensors")) if k != "__metadata__"]
    (index_of_single / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "model.safetensors" for k in names}}))
    for folder in (single, indexed, index_of_single):
        assert _ropeconv_files(folder) == _transformers_files(folder), folder.name
    assert len(_ropeconv_files(indexed)) > 1  # the sharded case is sharded


def _header_text(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]]


def test_index_beside_a_stray_single_file_refused(capsys, sharded, tiny_llama, tmp_path):
    """Before: ropeconv read the shards the index names while transformers (the parity reference, and every user
    loading the output's base) read model.safetensors: different weights, exit 0 under --no-verify."""
    base = Path(shutil.copytree(sharded, tmp_path / "base"))
    shutil.copy(tiny_llama / "model.safetensors", base / "model.safetensors")
    assert _transformers_files(base) == ["model.safetensors"]  # what the refusal says transformers loads
    out = tmp_path / "outputs" / "extended"
    out.parent.mkdir()
    before, parent = snapshot(base), listing(out.parent)
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "2", "--no-verify", "-q", "-o", out)
    refused(capsys, rc, base, before, out, parent, "model.safetensors.index.json", "transformers loads model.safetensors")


def test_transformers_weights_key_refused(capsys, base, out):
    config = json.loads((base / "config.json").read_text())
    config["transformers_weights"] = "other.safetensors"  # transformers would load this file alone
    (base / "config.json").write_text(json.dumps(config))
    save_file({"extra.weight": torch.zeros(3, 3)}, base / "other.safetensors")
    before, parent = snapshot(base), listing(out.parent)
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "2", "--no-verify", "-q", "-o", out)
    refused(capsys, rc, base, before, out, parent, "transformers_weights 'other.safetensors' names the weights")


def last_tensor(header: dict) -> str:
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])


def test_truncated_safetensors(capsys, base, out):
    weights = base / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("model.safetensors",))


@pytest.mark.parametrize("lie", ["shape", "dtype", "offsets"])
def test_header_lies_about_sizes(capsys, base, out, lie):
    """One tensor's data_offsets length disagrees with dtype × shape; the file is otherwise well-formed."""

    def edit(header):
        if lie == "shape":  # says half the rows: the offsets cover twice what dtype × shape needs
            name = first_2d_tensor(header)
            header[name]["shape"][0] //= 2
        elif lie == "dtype":  # F32 bytes declared as F16: the range is twice dtype × shape
            name = first_2d_tensor(header)
            assert header[name]["dtype"] == "F32"
            header[name]["dtype"] = "F16"
        else:  # the last tensor's range is 4 bytes short; the file keeps the 4 bytes as trailing data
            name = last_tensor(header)
            header[name]["data_offsets"][1] -= 4

    rewrite_header(base / "model.safetensors", edit)
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("model.safetensors",))


def test_pickle_weights_refused_without_allow_pickle(capsys, base, out):
    to_pickle(base)
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--allow-pickle", "pytorch_model.bin"))


def test_pickle_weights_with_allow_pickle(capsys, base, out):
    from transformers import AutoModelForCausalLM

    state = to_pickle(base)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--allow-pickle", "-q")
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err
    assert listing(out.parent) == [out.name]
    assert not list(out.glob("*.bin")), "the output must be safetensors only"
    assert load_file(out / "model.safetensors").keys() == state.keys()
    model = AutoModelForCausalLM.from_pretrained(out)
    loaded = model.state_dict()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    assert model.config.max_position_embeddings == 4 * ORIGINAL_CTX


def test_garbage_pickle_refused_even_with_allow_pickle(capsys, base, out):
    (base / "model.safetensors").unlink()
    (base / "pytorch_model.bin").write_bytes(b"\x80\x04this is not a pickle")
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--allow-pickle", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("pytorch_model.bin",))


def test_no_weights_at_all(capsys, base, out):
    (base / "model.safetensors").unlink()
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("safetensors",))


def test_inspect_pickle_base_refused(capsys, base):
    to_pickle(base)
    refused_in_place(capsys, run_cli("inspect", base), "--allow-pickle")


# ----------------------------------------------------------------------------- more malformed input
# Each of these is a malformed file a user can hand to ropeconv; the contract is the same one line.


def _rewrite_metadata(base: Path, metadata) -> None:
    def edit(header):
        header["__metadata__"] = metadata

    rewrite_header(base / "model.safetensors", edit)


def test_safetensors_metadata_not_an_object(capsys, base, out):
    _rewrite_metadata(base, ["not", "an", "object"])
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("model.safetensors",))


def test_index_weight_map_with_non_string_file(capsys, base, out):
    (base / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": 5}}))
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("model.safetensors.index.json",))


def test_pickle_with_dtype_safetensors_cannot_carry(capsys, base, out):
    state = load_file(base / "model.safetensors")
    state["extra.weight"] = torch.zeros(4).to(torch.complex64)
    torch.save(state, base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--allow-pickle", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("extra.weight",))


def test_pickle_float8_is_carried_byte_for_byte(base, out):
    state = load_file(base / "model.safetensors")
    state["extra.weight"] = torch.linspace(-2, 2, 8).to(torch.float8_e4m3fn)
    torch.save(state, base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    assert extend(base, out, "--method", "yarn", "--factor", "4", "--allow-pickle", "--no-verify", "-q") == 0
    written = load_file(out / "model.safetensors")["extra.weight"]
    assert written.dtype == torch.float8_e4m3fn
    assert torch.equal(written.view(torch.uint8), state["extra.weight"].view(torch.uint8))


@pytest.mark.parametrize("damage", ["missing-q_proj", "transposed-gate_proj"])
def test_tensor_missing_or_transposed(capsys, base, out, damage):
    def edit(header):
        if damage == "missing-q_proj":
            del header["model.layers.0.self_attn.q_proj.weight"]
        else:  # [in, out] where transformers stores nn.Linear as [out, in]; the bytes are the same
            header["model.layers.1.mlp.gate_proj.weight"]["shape"].reverse()

    rewrite_header(base / "model.safetensors", edit)
    before = listing(out.parent)
    name = "q_proj" if damage == "missing-q_proj" else "gate_proj"
    assert_refused(capsys, extend_yarn(base, out, "--no-verify"), out, before, mentions=(name,))


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: make_tiny(root, family) for family in TINY}


def _copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    return Path(shutil.copytree(src, dst))


@pytest.mark.parametrize("family", sorted(TINY))
def test_shape_table_per_family(families, tmp_path, family):
    """Every family's table agrees with the checkpoint transformers writes, and each kind of disagreement
    is refused: a dimension off, a required tensor missing, a weight transposed, one layer too many."""
    table = SHAPES[family]
    ckpt = load_checkpoint(families[family])  # transformers' own checkpoint passes
    assert ckpt.arch.model_type == family
    config = read_json(families[family] / "config.json")
    hidden_key = next(d.keys for n, d in table.dims if n == "hidden")
    hidden_key = next(k for k in hidden_key if k in config)
    layer_key = next(k for n, d in table.dims if n == "layers" for k in d.keys if k in config)

    def refused(edit_cfg=None, edit_header=None) -> str:
        b = _copy(families[family], tmp_path / "b")
        if edit_cfg:
            cfg = read_json(b / "config.json")
            edit_cfg(cfg)
            (b / "config.json").write_text(json.dumps(cfg))
        if edit_header:
            rewrite_header(b / "model.safetensors", edit_header)
        with pytest.raises(InputError) as exc:
            load_checkpoint(b)
        return str(exc.value)

    # the hidden size off by a multiple of every head count: a shape must disagree, not a divisibility rule
    msg = refused(edit_cfg=lambda c: c.update({hidden_key: c[hidden_key] + 96}))
    assert "config.json implies" in msg, msg
    msg = refused(edit_cfg=lambda c: c.update({layer_key: c[layer_key] + 1}))
    assert f"layers.{config[layer_key]}." in msg or f"h.{config[layer_key]}." in msg \
        or f"blocks.{config[layer_key]}." in msg, msg
    required = [t.name.format(i=1, e=1) for t in table.tensors if t.need == ALWAYS and "{i}" in t.name
                and t.layers != "dense"]  # mixture of experts: the tiny configs give every layer experts
    names = {e.name for e in ckpt.tensors}
    for name in required:
        assert name in names, f"{name} is required by the table but transformers did not write it"
    msg = refused(edit_header=lambda h: h.pop(required[0]))
    assert "checkpoint has no" in msg and required[0] in msg, msg
    square = {e.name for e in ckpt.tensors if len(e.shape) == 2 and e.shape[0] == e.shape[1]}
    target = next(n for n in required if n.endswith(".weight") and n in names and n not in square
                  and len(next(e for e in ckpt.tensors if e.name == n).shape) == 2)
    msg = refused(edit_header=lambda h: h[target]["shape"].reverse())
    assert target in msg and "config.json implies" in msg, msg
    experts = [t.name for t in table.tensors if "{e}" in t.name]
    if experts:  # the last expert of the last layer missing: every expert of every layer is checked
        last = experts[0].format(i=config[layer_key] - 1, e=next(config[k] for n, d in table.dims if n == "experts"
                                                                  for k in d.keys if k in config) - 1)
        msg = refused(edit_header=lambda h: h.pop(last))
        assert "checkpoint has no" in msg and last in msg, msg
    print(family, "ok:", len(ckpt.tensors), "tensors checked")


def test_untied_lm_head_required_tied_not(families, tmp_path):
    b = _copy(families["llama"], tmp_path / "b")
    rewrite_header(b / "model.safetensors", lambda h: h.pop("lm_head.weight"))
    with pytest.raises(InputError, match="lm_head.weight"):
        load_checkpoint(b)  # tie_word_embeddings false: the output matrix is its own tensor
    edit_config(b, tie_word_embeddings=True)
    assert load_checkpoint(b).arch.model_type == "llama"


# ----------------------------------------------------------------------------- 6: non-regular weight files


def _fifo(path: Path) -> None:
    if path.exists():
        path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("where", ["model.safetensors", "indexed-shard", "pytorch_model.bin", "directory",
                                   "char-device", "config.json", "index"])
def test_non_regular_weight_file_refused(capsys, base, out, where):
    args = ["--no-verify"]
    if where == "model.safetensors":
        _fifo(base / "model.safetensors")
    elif where == "indexed-shard":
        header, _ = header_of(base / "model.safetensors")
        weight_map = {name: "model.safetensors" for name in header if name != "__metadata__"}
        weight_map["extra.weight"] = "model-00002-of-00002.safetensors"
        (base / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        _fifo(base / "model-00002-of-00002.safetensors")
    elif where == "pytorch_model.bin":
        (base / "model.safetensors").unlink()
        _fifo(base / "pytorch_model.bin")
        args.append("--allow-pickle")
    elif where == "directory":
        (base / "model.safetensors").unlink()
        (base / "model.safetensors").mkdir()
    elif where == "char-device":
        (base / "model.safetensors").unlink()
        (base / "model.safetensors").symlink_to("/dev/zero")
    elif where == "config.json":
        _fifo(base / "config.json")
    else:
        _fifo(base / "model.safetensors.index.json")
    kind = {"directory": "directory", "char-device": "character device"}.get(where, "FIFO")
    fifos = [p for p in base.iterdir() if p.is_fifo()]
    before = listing(out.parent)
    with no_hang(*fifos):
        rc = extend_yarn(base, out, *args)
    assert_refused(capsys, rc, out, before, mentions=(kind,))
    if where != "pytorch_model.bin":  # inspect never loads pickles (it refuses them as such)
        with no_hang(*fifos):
            refused_in_place(capsys, run_cli("inspect", base), kind)


def _by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


HEADER_DAMAGE = {
    # [true, 64] for a [64] tensor: Python counts True as 1, so the bytes agree; safetensors cannot read it back
    "bool-in-shape": lambda h: h["model.norm.weight"].update(shape=[True] + h["model.norm.weight"]["shape"]),
    "float-in-shape": lambda h: h[first_2d_tensor(h)].update(shape=[float(h[first_2d_tensor(h)]["shape"][0]),
                                                              h[first_2d_tensor(h)]["shape"][1]]),
    "negative-offset": lambda h: h[_by_offset(h)[0]].update(data_offsets=[-4, h[_by_offset(h)[0]]["data_offsets"][1]]),
    "overlapping": lambda h: h[_by_offset(h)[1]].update(
        data_offsets=[o - 4 for o in h[_by_offset(h)[1]]["data_offsets"]]),
    "past-the-file": lambda h: h[_by_offset(h)[-1]].update(
        data_offsets=[o + 4096 for o in h[_by_offset(h)[-1]]["data_offsets"]]),
    "size-mismatch": lambda h: h[first_2d_tensor(h)]["shape"].__setitem__(0, h[first_2d_tensor(h)]["shape"][0] + 1),
    "unknown-dtype": lambda h: h[first_2d_tensor(h)].update(dtype="F128"),
    "dtype-list": lambda h: h[first_2d_tensor(h)].update(dtype=["F32"]),
    "lone-surrogate-name": lambda h: h.update({"\ud800bad": h.pop(_by_offset(h)[0])}),
}


@pytest.mark.parametrize("verify", [False, True], ids=["no-verify", "verify"])
@pytest.mark.parametrize("damage", list(HEADER_DAMAGE) + ["non-finite", "header-length"])
def test_malformed_safetensors_header_refused(capsys, base, out, damage, verify):
    weights = base / "model.safetensors"
    if damage == "non-finite":
        header, data = header_of(weights)
        text = json.dumps(header, separators=(",", ":"))
        name = first_2d_tensor(header)
        text = text.replace(f'"{name}":{{', f'"{name}":{{"scale":NaN,', 1)
        write_header(weights, text.encode(), data)
    elif damage == "header-length":
        header, data = header_of(weights)
        write_header(weights, json.dumps(header).encode(), data, length=weights.stat().st_size * 2)
    else:
        rewrite_header(weights, HEADER_DAMAGE[damage])
    before = listing(out.parent)
    rc = extend_yarn(base, out, *([] if verify else ["--no-verify"]), "-q")
    assert_refused(capsys, rc, out, before, mentions=("model.safetensors",))


# ----------------------------------------------------------------------------- 15. pickles in verify


def test_verify_takes_allow_pickle(tmp_path, base, place, capsys):
    import torch
    from safetensors.torch import load_file

    out = place / "out"
    assert cli(capsys, *extend_args(base, out))[0] == 0
    pickled = Path(shutil.copytree(base, tmp_path / "pickled"))
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    verify = ("verify", out, "--device", "cpu", "--tokens", "16", "-q")
    one_line(*cli(capsys, *verify, "--base", pickled), str(pickled), "pytorch_model.bin", "--allow-pickle")
    assert cli(capsys, *verify, "--base", pickled, "--allow-pickle")[0] == 0
    # an output folder whose weights are a pickle
    shutil.copyfile(pickled / "pytorch_model.bin", out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()
    one_line(*cli(capsys, *verify), str(out), "pytorch_model.bin", "--allow-pickle")


CHECKPOINT_SEED, CHECKPOINT_CASES = 1415, 200


def test_checkpoint_config_and_header_fuzz(tiny_llama):
    summary = fuzz("checkpoint", tiny_llama, CHECKPOINT_SEED, CHECKPOINT_CASES)
    assert summary["max_peak_rss_kib"] < 64 << 10, summary
