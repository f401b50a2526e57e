"""Bad input: exit 2, exactly one `ropeconv: error:` line on stderr, no traceback, nothing left behind.

Every case runs the CLI in-process (run_cli) on a private copy of a tiny checkpoint, with the output
in its own directory, so "nothing left behind" is checked as "the output's parent is unchanged": no
`-o` target and no hidden `.name.*.tmp` / `.name.*.old` sibling.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import ORIGINAL_CTX, assert_refused, listing, make_tiny, read_json, run_cli
from safetensors.torch import load_file

N_PAIRS = 8  # tiny llama: head_dim 16, full rotary -> 8 frequency pairs


# ----------------------------------------------------------------------------- helpers


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (directories as markers)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("phi3"), "phi3")


def extend(base: Path, out: Path, *args: str) -> int:
    return run_cli("extend", base, *args, "-o", out)


def edit_config(base: Path, **changes) -> None:
    cfg = read_json(base / "config.json")
    cfg.update(changes)
    (base / "config.json").write_text(json.dumps(cfg, indent=2))


def rewrite_header(path: Path, edit) -> None:
    """Re-emit a safetensors file with edit(header) applied; the data area is kept byte for byte."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    edit(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def first_2d_tensor(header: dict) -> str:
    return next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2)


def last_tensor(header: dict) -> str:
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])


# ----------------------------------------------------------------------------- the checkpoint


def test_missing_config_json(capsys, base, out):
    (base / "config.json").unlink()
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("config.json",))


def test_base_not_found(capsys, tmp_path, out):
    before = listing(out.parent)
    rc = extend(tmp_path / "nope", out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("nope",))


def test_config_json_not_json(capsys, base, out):
    (base / "config.json").write_text('{"model_type": "llama", ')
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("config.json",))


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


@pytest.mark.parametrize("model_type", ["bert_xyz", None])
def test_unknown_architecture(capsys, base, out, model_type):
    edit_config(base, model_type=model_type)
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("bert_xyz",) if model_type else ("model_type",))


# ----------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("factor", ["1", "0.5", "nan", "inf", "0", "-2"])
def test_bad_factor(capsys, base, out, factor):
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", f"--factor={factor}", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factor",))


@pytest.mark.parametrize("target", [ORIGINAL_CTX, ORIGINAL_CTX // 2, 1, 0, -128])
def test_target_ctx_not_above_original(capsys, base, out, target):
    before = listing(out.parent)
    rc = extend(base, out, "--method", "linear", f"--target-ctx={target}", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--target-ctx",))


def test_both_factor_and_target_ctx(capsys, base, out):
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--target-ctx", "256", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factor", "--target-ctx"))


def test_neither_factor_nor_target_ctx(capsys, base, out):
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factor", "--target-ctx"))


# ----------------------------------------------------------------------------- factor files

GOOD = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.0]
BAD_VALUES = {"negative": "-2.0", "zero": "0", "nan_literal": "NaN", "infinity_literal": "Infinity",
              "overflow_to_inf": "1e999", "string": '"2.0"', "null": "null", "bool": "true"}  # fmt: skip


def _json_list(values: list[str]) -> str:
    return "[" + ", ".join(values) + "]"


def _with_bad(bad: str, at: int = 3) -> str:
    values = [repr(v) for v in GOOD]
    values[at] = bad
    return _json_list(values)


@pytest.mark.parametrize("bad", list(BAD_VALUES), ids=list(BAD_VALUES))
def test_freqs_factor_file_bad_value(capsys, base, out, tmp_path, bad):
    factors = tmp_path / "factors.json"
    factors.write_text(_with_bad(BAD_VALUES[bad]))
    before = listing(out.parent)
    rc = extend(base, out, "--method", "freqs", "--factors", factors, "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factors",))


@pytest.mark.parametrize("which", ["short_factor", "long_factor"])
@pytest.mark.parametrize("bad", list(BAD_VALUES), ids=list(BAD_VALUES))
def test_longrope_factor_file_bad_value(capsys, base, out, tmp_path, bad, which):
    good = _json_list([repr(v) for v in GOOD])
    sets = {"short_factor": good, "long_factor": good}
    sets[which] = _with_bad(BAD_VALUES[bad])
    factors = tmp_path / "factors.json"
    factors.write_text("{" + ", ".join(f'"{k}": {v}' for k, v in sets.items()) + "}")
    before = listing(out.parent)
    rc = extend(base, out, "--method", "longrope", "--factors", factors, "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factors",))


@pytest.mark.parametrize("n", [0, N_PAIRS - 1, N_PAIRS + 1, 2 * N_PAIRS])
@pytest.mark.parametrize("method", ["freqs", "longrope"])
def test_factor_list_wrong_length(capsys, base, out, tmp_path, method, n):
    values = [2.0] * n
    factors = tmp_path / "factors.json"
    body = values if method == "freqs" else {"short_factor": [1.0] * N_PAIRS, "long_factor": values}
    factors.write_text(json.dumps(body))
    before = listing(out.parent)
    rc = extend(base, out, "--method", method, "--factors", factors, "--factor", "4", "--no-verify")
    line = assert_refused(capsys, rc, out, before, mentions=("--factors",))
    assert str(N_PAIRS) in line


@pytest.mark.parametrize("method", ["freqs", "longrope"])
@pytest.mark.parametrize("problem", ["missing_file", "not_json", "wrong_shape", "no_flag"])
def test_factor_file_unusable(capsys, base, out, tmp_path, method, problem):
    factors = tmp_path / "factors.json"
    if problem == "not_json":
        factors.write_text("[1.0, 2.0,")
    elif problem == "wrong_shape":
        factors.write_text(json.dumps({"something": [1.0] * N_PAIRS}))
    args = [] if problem == "no_flag" else ["--factors", factors]
    before = listing(out.parent)
    rc = extend(base, out, "--method", method, *args, "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factors",))


def test_freqs_good_factor_file_is_accepted(capsys, base, out, tmp_path):
    """Control: the same file without the bad value converts (so the refusals above are about the value)."""
    factors = tmp_path / "factors.json"
    factors.write_text(_json_list([repr(v) for v in GOOD]))
    assert extend(base, out, "--method", "freqs", "--factors", factors, "--factor", "4", "--no-verify", "-q") == 0
    assert (out / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- the output


def test_existing_output_without_force_is_untouched(capsys, base, out):
    out.mkdir()
    (out / "keep.txt").write_text("precious\n")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(bytes(range(256)))
    digest = tree_digest(out)
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--force",))
    assert tree_digest(out) == digest


def test_existing_output_file_without_force_is_untouched(capsys, base, out):
    out.write_text("not a directory\n")
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--force",))
    assert out.read_text() == "not a directory\n"


def test_existing_output_with_force_is_replaced(capsys, base, out):
    # --force replaces a previous ropeconv output (tests/test_safety.py: and nothing else)
    assert extend(base, out, "--method", "linear", "--factor", "2", "--no-verify", "-q") == 0
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify", "--force")
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert read_json(out / "manifest.json")["plan"]["method"] == "yarn"
    assert {"config.json", "model.safetensors", "manifest.json"} <= set(listing(out))
    assert listing(out.parent) == [out.name], "a staging or old-output sibling was left behind"


def test_output_below_a_file(capsys, base, tmp_path):
    """(Missing parent folders are created: tests/test_card_options.py.)"""
    (tmp_path / "no").write_text("a file where a folder must be")
    out = tmp_path / "no" / "such" / "dir"
    before = listing(tmp_path)
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--no-verify", "-o", out)
    captured = capsys.readouterr()
    assert rc == 2 and "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: "), captured.err
    assert listing(tmp_path) == before


# ----------------------------------------------------------------------------- pickle weights


def _to_pickle(base: Path) -> dict[str, torch.Tensor]:
    state = load_file(base / "model.safetensors")
    torch.save(state, base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    return state


def test_pickle_weights_refused_without_allow_pickle(capsys, base, out):
    _to_pickle(base)
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--allow-pickle", "pytorch_model.bin"))


def test_pickle_weights_with_allow_pickle(capsys, base, out):
    from transformers import AutoModelForCausalLM

    state = _to_pickle(base)
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


# ----------------------------------------------------------------------------- existing rope scaling


def _add_linear_scaling(base: Path) -> None:
    edit_config(base, rope_scaling={"rope_type": "linear", "factor": 2.0})


def test_existing_rope_scaling_refused_without_rebase(capsys, base, out):
    _add_linear_scaling(base)
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--rebase", "linear"))


def test_existing_rope_scaling_with_rebase(capsys, base, out):
    _add_linear_scaling(base)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--rebase", "-q")
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert listing(out.parent) == [out.name]
    cfg = read_json(out / "config.json")
    assert cfg["rope_parameters"]["rope_type"] == "yarn"
    assert cfg["rope_parameters"]["factor"] == 4.0
    assert (cfg.get("rope_scaling") or {}).get("rope_type") in (None, "yarn")
    assert "linear" not in json.dumps(cfg)


# ----------------------------------------------------------------------------- methods and options


def test_yarn_on_phi3_refused(capsys, tiny_phi3, out):
    before = listing(out.parent)
    rc = extend(tiny_phi3, out, "--method", "yarn", "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("phi3", "yarn"))


@pytest.mark.parametrize(
    "method, args, flag",
    [
        ("linear", ["--beta-fast", "16"], "--beta-fast"),
        ("linear", ["--attention-factor", "1.5"], "--attention-factor"),
        ("ntk", ["--factors", "factors.json"], "--factors"),
    ],
)
def test_option_that_does_not_apply(capsys, base, out, method, args, flag):
    before = listing(out.parent)
    rc = extend(base, out, "--method", method, "--factor", "4", *args, "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=(flag, method))


@pytest.mark.parametrize(
    "args, mentions",
    [
        (["--method", "nosuch", "--factor", "4"], ("--method",)),
        (["--method", "yarn", "--factor", "four"], ("--factor",)),
        (["--method", "yarn", "--factor", "4", "--to", "pickle"], ("--to",)),
        (["--method", "yarn", "--factor", "4", "--max-shard-size", "lots"], ("--max-shard-size",)),
        (["--method", "yarn", "--factor", "4", "--tokens", "1"], ("--tokens",)),
        (["--method", "yarn", "--factor", "4", "--max-abs-logit", "nan"], ("--max-abs-logit",)),
        (["--method", "yarn", "--factor", "4", "--beta-fast", "1", "--beta-slow", "2"], ("--beta-fast",)),
        (["--method", "yarn", "--factor", "4", "--attention-factor=-1"], ("--attention-factor",)),
        (["--method", "yarn", "--factor", "4", "--no-such-flag"], ("--no-such-flag",)),
    ],
    ids=["unknown-method", "factor-not-a-number", "unknown-format", "bad-shard-size", "tokens-1",
         "max-abs-logit-nan", "beta-fast-below-slow", "negative-attention-factor", "unknown-flag"],
)
def test_bad_option_values(capsys, base, out, args, mentions):
    before = listing(out.parent)
    rc = extend(base, out, *args, "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=mentions)


def test_missing_out_option(capsys, base):
    rc = run_cli("extend", base, "--method", "yarn", "--factor", "4", "--no-verify")
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: ") and "--out" in lines[0], captured.err


# ----------------------------------------------------------------------------- verify and inspect


def _refused_no_output(capsys, rc: int, *mentions: str) -> str:
    captured = capsys.readouterr()
    assert rc == 2, f"exit {rc}; stderr:\n{captured.err}"
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: "), captured.err
    for word in mentions:
        assert word.lower() in lines[0].lower(), lines[0]
    return lines[0]


def test_verify_dir_without_manifest(capsys, base):
    before = tree_digest(base)
    _refused_no_output(capsys, run_cli("verify", base, "-q"), "manifest")
    assert tree_digest(base) == before


def test_verify_unreadable_manifest(capsys, base):
    (base / "manifest.json").write_text("{not json")
    _refused_no_output(capsys, run_cli("verify", base, "-q"), "manifest")


def test_verify_missing_path(capsys, tmp_path):
    _refused_no_output(capsys, run_cli("verify", tmp_path / "nope", "-q"), "nope")


def test_verify_file_not_dir(capsys, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    _refused_no_output(capsys, run_cli("verify", f, "-q"), "file.txt")


def test_verify_base_not_a_directory(capsys, base, out, tmp_path):
    assert extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify", "-q") == 0
    capsys.readouterr()
    _refused_no_output(capsys, run_cli("verify", out, "--base", tmp_path / "nope", "-q"), "--base")


def test_inspect_missing_path(capsys, tmp_path):
    _refused_no_output(capsys, run_cli("inspect", tmp_path / "nope"), "nope")


def test_inspect_dir_without_config(capsys, tmp_path):
    _refused_no_output(capsys, run_cli("inspect", tmp_path), "config.json")


def test_inspect_pickle_base_refused(capsys, base):
    _to_pickle(base)
    _refused_no_output(capsys, run_cli("inspect", base), "--allow-pickle")


def test_refusals_never_touch_the_base(capsys, base, out):
    """Across several refusals the base directory stays byte-identical."""
    before = tree_digest(base)
    for args in (["--factor", "1"], ["--target-ctx", "8"], ["--factor", "4", "--beta-fast", "nan"]):
        assert extend(base, out, "--method", "yarn", *args, "--no-verify") == 2
    capsys.readouterr()
    assert tree_digest(base) == before


# ----------------------------------------------------------------------------- the real process


@pytest.mark.parametrize("case", ["truncated", "pickle", "exists"])
def test_real_process_stderr_is_one_line(base, out, case):
    """Out of process too (imports, warnings and logging included): exit 2 and one stderr line."""
    import subprocess
    import sys

    args = ["--method", "yarn", "--factor", "4", "--no-verify"]
    if case == "truncated":
        weights = base / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif case == "pickle":
        _to_pickle(base)
    else:
        out.mkdir()
    before = listing(out.parent)
    script = Path(sys.executable).with_name("ropeconv")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "ropeconv.cli.main"]
    proc = subprocess.run(cmd + ["extend", str(base), *args, "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: "), proc.stderr
    assert proc.stdout == ""
    assert listing(out.parent) == before


# ----------------------------------------------------------------------------- parity failure is exit 1, not 2


def test_extend_parity_failure_is_exit_1_and_publishes_nothing(capsys, base, out):
    before = listing(out.parent)
    rc = extend(base, out, "--method", "yarn", "--factor", "4", "--max-abs-logit", "1e-30", "--device", "cpu", "-q")
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: parity failed"), captured.err
    assert listing(out.parent) == before


def test_verify_parity_failure_is_exit_1(capsys, base, out):
    assert extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify", "-q") == 0
    cfg = read_json(out / "config.json")  # tamper: the artifact now declares a different rope than its manifest
    for key in ("rope_parameters", "rope_scaling"):
        if cfg.get(key):
            cfg[key]["factor"] = 8.0
    (out / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    rc = run_cli("verify", out, "-q", "--device", "cpu")
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropeconv: error: parity failed"), captured.err


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


@pytest.mark.parametrize("method", ["freqs", "longrope"])
def test_factor_file_not_utf8(capsys, base, out, tmp_path, method):
    factors = tmp_path / "factors.json"
    factors.write_bytes(b"\xff\xfe[1.0]")
    before = listing(out.parent)
    rc = extend(base, out, "--method", method, "--factors", factors, "--factor", "4", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factors",))


@pytest.mark.parametrize("value", ["abc", [64]], ids=["string", "list"])
@pytest.mark.parametrize("command", ["extend", "inspect"])
def test_existing_scaling_original_ctx_not_a_number(capsys, base, out, value, command):
    edit_config(base, rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": value})
    before = listing(out.parent)
    if command == "extend":
        rc = extend(base, out, "--method", "yarn", "--factor", "4", "--rebase", "--no-verify")
    else:
        rc = run_cli("inspect", base)
    assert_refused(capsys, rc, out, before, mentions=("original_max_position_embeddings",))


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


@pytest.mark.parametrize("damage", ["plan-empty", "plan-not-object", "no-vocab_size", "no-base", "manifest-a-list"])
@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_damaged_manifest(capsys, base, out, damage, command):
    assert extend(base, out, "--method", "yarn", "--factor", "4", "--no-verify", "-q") == 0
    capsys.readouterr()
    manifest = read_json(out / "manifest.json")
    if damage == "plan-empty":
        manifest["plan"] = {}
    elif damage == "plan-not-object":
        manifest["plan"] = [1, 2]
    elif damage == "no-vocab_size":
        del manifest["vocab_size"]
    elif damage == "no-base":
        del manifest["base"]
    else:
        manifest = [manifest]
    (out / "manifest.json").write_text(json.dumps(manifest))
    if command == "verify":
        _refused_no_output(capsys, run_cli("verify", out, "-q", "--device", "cpu"), "manifest")
    else:
        # inspect reports what it can read; a damaged manifest must not crash it
        rc = run_cli("inspect", out, "--json")
        captured = capsys.readouterr()
        assert rc in (0, 2), captured.err
        assert "Traceback" not in captured.err
        if rc == 2:
            assert len(captured.err.splitlines()) == 1 and "manifest" in captured.err, captured.err


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_overlapping_the_base_is_refused(capsys, base, where):
    target = base if where == "same" else base / "sub"
    before = sorted(p.name for p in base.iterdir())
    rc = extend(base, target, "--method", "yarn", "--factor", "4", "--force", "--no-verify")
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overlaps the base" in err[0]
    assert sorted(p.name for p in base.iterdir()) == before


def test_absurd_factor_is_refused(capsys, base, out):
    before = listing(out.parent)
    rc = extend(base, out, "--method", "linear", "--factor", "1e300", "--no-verify")
    assert_refused(capsys, rc, out, before, mentions=("--factor",))
