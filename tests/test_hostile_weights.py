"""Hostile weights (issue 26): safetensors headers read at least as strictly as safetensors' own loader,
non-finite weights refused by tensor name while they stream, LoRA adapter numbers and patterns read strictly,
--factors files bounded and in range, and the weight files chosen as transformers chooses them.

The contract for every refusal: exit 2, exactly one `ropeconv: error:` line on stderr, no traceback, nothing
left beside the target (conftest.assert_refused), and every file of the base byte-identical.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import pytest
import torch
from conftest import add_byte_level_tokenizer, assert_refused, listing, make_tiny, run_cli
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ropeconv.checkpoint import load_checkpoint
from ropeconv.checkpoint.safetensors_header import read_header
from ropeconv.checkpoint.sources import SafetensorsSource
from ropeconv.errors import InputError
from ropeconv.lora import read_adapter
from ropeconv.methods import freqs


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def refused(capsys, rc: int, base: Path, before: dict[str, bytes], out: Path, parent: list[str], *mentions: str) -> str:
    line = assert_refused(capsys, rc, out, parent, mentions=mentions)
    assert snapshot(base) == before, "a base file changed"
    return line


def one_line(exc: pytest.ExceptionInfo, *mentions: str) -> str:
    text = str(exc.value)
    assert "\n" not in text and text, text
    for word in mentions:
        assert word.lower() in text.lower(), text
    return text


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
    one_line(exc, str(path))


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
    one_line(exc, "start with '{'")


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
    one_line(exc, mention)


@pytest.mark.parametrize("rope", [["yarn", 2], {"method": "yarn", "params": [1]}, {"method": "yarn", "factor": "x"}],
                         ids=["a-list", "params-a-list", "factor-a-string"])
def test_bad_rope_record_refused(tiny_llama, tmp_path, rope):
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", {}, rope=rope)
    with pytest.raises(InputError) as exc:
        read_adapter(adapter)
    one_line(exc, "ropeconv_rope.json")


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


# ----------------------------------------------------------------------------- 4: --factors files


def _n_pairs(base: Path) -> int:
    return load_checkpoint(base).scheme.n_pairs


@pytest.mark.parametrize("value", [5e-324, 1e-300, 1e300, 10**400], ids=["denormal", "tiny", "huge", "huge-int"])
def test_factor_out_of_range_refused(tiny_llama, tmp_path, value):
    n = _n_pairs(tiny_llama)
    path = tmp_path / "factors.json"
    path.write_text("[" + ", ".join(["1.0"] * (n - 1) + [repr(value)]) + "]")
    with pytest.raises(InputError) as exc:
        freqs.read_factors(path, n)
    one_line(exc, f"[{n - 1}]", "outside")


@pytest.mark.parametrize("case", ["denormal", "nested-100k"])
def test_bad_factors_file_refused_by_extend(capsys, base, out, tmp_path, case):
    """Before: a 5e-324 entry gave NaN past the original context (published under --no-verify); a file nested
    100k deep ended in a RecursionError traceback."""
    path = tmp_path / "factors.json"
    if case == "denormal":
        path.write_text(json.dumps([1.0] * (_n_pairs(base) - 1) + [5e-324]))
    else:
        path.write_text('{"factors": ' + "[" * 100_000 + "]" * 100_000 + "}")
    before, parent = snapshot(base), listing(out.parent)
    rc = run_cli("extend", base, "--method", "freqs", "--factors", path, "--factor", "2", "--no-verify", "-q", "-o", out)
    refused(capsys, rc, base, before, out, parent, "outside [2^-10, 2^20]" if case == "denormal" else "nested more than")


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
