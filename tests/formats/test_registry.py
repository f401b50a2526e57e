"""The format registry drives extend, inspect and verify: a format registered here, in a test, with nothing edited
elsewhere, is planned, streamed by the one loop, hashed into the manifest, inspected and verified through its
record; every writer follows the one protocol, and abort() leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from ropeconv.checkpoint import load_checkpoint
from ropeconv.checkpoint.sources import tensor_bytes
from ropeconv.export.stream import open_writers, stream
from ropeconv.extend.from_hf import prepare
from ropeconv.extend.job import ExtendJob
from ropeconv.formats import FORMATS, EvalSpec, Format, Ref, Writer, artifact_format, format_of, register, unregister
from ropeconv.hashing import HashedWriter
from ropeconv.methods.base import ExtendRequest
from ropeconv.optionfields import option
from ropeconv.parity.runtimes.base import RuntimeBase
from tests.conftest import add_byte_level_tokenizer, listing, read_json, run_cli

REAL = ("safetensors", "gguf", "onnx")


class RawDump:
    """A trivial format's writer: every tensor's bytes appended to model.raw, hashed while written."""

    FILE = "model.raw"

    def __init__(self, planning, out: Path, note) -> None:
        self.path = Path(out) / self.FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._out = HashedWriter(self._fd)
        self._digest: str | None = None
        self.asked = False

    def write(self, entry, source) -> None:
        self._out.write(tensor_bytes(source.load(entry)))

    def _release(self) -> None:
        if self._fd is not None:
            self._out.close()
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._digest = self._out.hexdigest()
        self._release()

    def abort(self) -> None:
        self._release()
        self.path.unlink(missing_ok=True)
        self._digest = None

    def files(self) -> list[str]:
        return [self.FILE] if self._digest else []

    def sha256(self) -> dict[str, str]:
        self.asked = True
        return {self.FILE: self._digest} if self._digest else {}


SEEN: dict[str, object] = {}  # what the fake format's hooks were called with


def _writer(planning, out, note):
    SEEN["writer"] = RawDump(planning, out, note)
    return SEEN["writer"]


def _inspect(path: Path, as_json: bool) -> int:
    SEEN["inspect"] = path
    print(f"rawdump {path.stat().st_size} bytes")
    return 0


def _verify(path: Path, base, **kwargs):
    SEEN["verify"] = (path, base)
    return "verified by rawdump"


@dataclass(frozen=True)
class RawdumpOptions:
    """The fake format's own option, declared as the real formats declare theirs (formats.gguf.GgufOptions)."""

    endian: str = option("byte order of model.raw", "little", flags=("--raw-endian",),
                         click={"choices": ("little", "big")}, schema=("little", "big"))


def _record(planning, plan) -> dict:
    return {"file": RawDump.FILE, "tensors": len(planning.checkpoint.tensors),
            "endian": planning.job.options_for("rawdump").endian}


class RawRuntime(RuntimeBase):
    """The fake format's runtime record: nothing to install, so `require` passes."""

    name = "rawdump-engine"


RUNTIME = RawRuntime()  # named by the fake format's runtime_module: this test module


class RawEval:
    """The fake format's eval adapter: bytes as tokens, and a "model" that answers a passkey prompt by reading the
    key from it — so `ropeconv eval passkey` on the fake artifact scores 100 % through the format's own record."""

    def __init__(self, ref, device, placement=None) -> None:
        SEEN["eval"] = ref
        self.name = RUNTIME.name

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode())

    def detokenize(self, ids: list[int]) -> str:
        return bytes(ids).decode()

    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        import re

        key = re.search(r"The pass key is (\d+)\.", self.detokenize(ids)).group(1)
        return self.tokenize(f" {key}.")[:max_new_tokens]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _raw_in(folder: Path) -> Path | None:
    return folder / RawDump.FILE if (folder / RawDump.FILE).is_file() else None


@pytest.fixture
def rawdump():
    SEEN.clear()
    fmt = register(Format(
        "rawdump", ".raw", "none", "raw", proof="nothing (a test format)",
        plan=lambda planning: planning, writer=_writer, record=_record, options_group=RawdumpOptions,
        matrix_note=lambda: "a test format that writes the tensors back to back",
        runtime_module=__name__, eval=EvalSpec("raw", 3, "model.raw", _raw_in, RawEval),
        artifact=lambda out, record: out / record["file"], inspect=_inspect, verify_file=_verify,
        summary=lambda record: record["file"],
    ))
    yield fmt
    unregister("rawdump")


@pytest.fixture(scope="module")
def tiny(tiny_llama, tmp_path_factory) -> Path:
    # the session's tiny llama, with the vocabulary llama.cpp needs in the GGUF
    return add_byte_level_tokenizer(Path(shutil.copytree(tiny_llama, tmp_path_factory.mktemp("registry") / "base")))


def _planned(base: Path, names: tuple[str, ...], out: Path):
    prepared = prepare(ExtendJob(base=base, method="yarn", request=ExtendRequest(factor=2), out=out, formats=names))
    return prepared.checkpoint, prepared.planned()


def test_every_hook_a_record_names_exists():
    """A Ref is a name, not an import: each must name a function that is there (a typo would surface only when a
    user first writes that format)."""
    for fmt in FORMATS.values():
        for field in fmt.__dataclass_fields__:
            hook = getattr(fmt, field)
            if isinstance(hook, Ref):
                module, _, name = hook.target.partition(":")
                assert callable(getattr(__import__(module, fromlist=[name]), name)), f"{fmt.name}.{field}"
        assert fmt.runtime_module, fmt.name
        assert fmt.inspect is not None, f"{fmt.name}: no inspect view"
    assert [f.name for f in FORMATS.values() if f.is_checkpoint] == ["safetensors"]  # the one folder format


def test_a_registered_format_is_written_inspected_and_verified_through_its_record(rawdump, tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("extend", tiny, "--method", "yarn", "--factor", "2", "--to", "safetensors,rawdump", "--no-verify",
                   "-q", "-o", out) == 0
    raw = out / RawDump.FILE
    ckpt = load_checkpoint(tiny)
    # the shared loop fed every tensor, in order: the file is the base's tensors back to back
    expected = hashlib.sha256()
    source = ckpt.open_source()
    for entry in ckpt.tensors:
        expected.update(tensor_bytes(source.load(entry)))
    source.close()
    assert raw.stat().st_size == ckpt.total_bytes
    manifest = read_json(out / "manifest.json")
    on_disk = hashlib.sha256(raw.read_bytes()).hexdigest()
    assert manifest["files"][RawDump.FILE]["sha256"] == expected.hexdigest() == on_disk
    assert SEEN["writer"].asked  # the digest came from the writer (hashed while written)
    assert manifest["formats"]["rawdump"] == {"file": RawDump.FILE, "tensors": len(ckpt.tensors), "endian": "little"}
    assert (out / "model.safetensors").is_file()  # the other format in the same pass

    capsys.readouterr()
    assert run_cli("inspect", raw) == 0
    assert SEEN["inspect"] == raw and f"rawdump {ckpt.total_bytes} bytes" in capsys.readouterr().out
    assert run_cli("inspect", out) == 0  # the folder: the checkpoint view, listing the format by its summary
    assert f"rawdump          {RawDump.FILE}" in capsys.readouterr().out

    from ropeconv.verify import verify_output

    assert verify_output(raw, base=tiny) == ["verified by rawdump"]
    assert SEEN["verify"] == (raw, tiny)


def test_a_format_written_alone_is_inspected_by_its_own_view(rawdump, tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("extend", tiny, "--method", "yarn", "--factor", "2", "--to", "rawdump", "--no-verify", "-q",
                   "-o", out) == 0
    capsys.readouterr()
    assert run_cli("inspect", out) == 0
    assert SEEN["inspect"] == out / RawDump.FILE


def test_an_unregistered_format_is_refused_in_one_line(tiny, tmp_path, capsys):
    rc = run_cli("extend", tiny, "--method", "yarn", "--factor", "2", "--to", "rawdump", "--no-verify", "-o",
                 tmp_path / "out")
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("ropeconv: error: --to 'rawdump'") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_every_writer_follows_the_protocol_and_hashes_what_it_writes(rawdump, tiny, tmp_path):
    """All three real writers and the fake in one pass of the shared loop: each is a Writer, lists the files it
    wrote, and each digest it reports is the sha256 of that file as it lies on disk."""
    out = tmp_path / "out"
    out.mkdir()
    ckpt, planned = _planned(tiny, REAL + ("rawdump",), out)
    writers = open_writers(planned, out, lambda line: None)
    assert all(isinstance(w, Writer) for w in writers) and len(writers) == 4
    files, known = stream(ckpt, writers)
    assert files == [f for w in writers for f in w.files()]
    assert {"model.safetensors", "model.raw", "onnx/model.onnx"} <= set(files)
    assert any(f.endswith(".gguf") for f in files)
    for w in writers:
        assert w.sha256(), f"{type(w).__name__}: nothing hashed while written"
    assert set(known) == set(files)  # nothing left for the manifest to read back
    for name, digest in known.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("name", REAL + ("rawdump",))
@pytest.mark.parametrize("when", ["midway", "after close"])
def test_abort_leaves_nothing_behind(rawdump, tiny, tmp_path, name, when):
    out = tmp_path / "out"
    out.mkdir()
    ckpt, planned = _planned(tiny, (name,), out)
    [writer] = open_writers(planned, out, lambda line: None)
    source = ckpt.open_source()
    try:
        tensors = ckpt.tensors if when == "after close" else ckpt.tensors[: len(ckpt.tensors) // 2]
        for entry in tensors:
            writer.write(entry, source)
        if when == "after close":
            writer.close()
            assert writer.files() and all((out / f).is_file() for f in writer.files())
        else:
            assert listing(out), "nothing written midway: the abort below would prove nothing"
        writer.abort()
    finally:
        source.close()
    assert listing(out) == []
    assert writer.files() == [] and writer.sha256() == {}


def test_a_failing_writer_aborts_every_writer_in_the_loop(tiny, tmp_path):
    """One writer failing midway (a full disk, say) stops the pass; the loop aborts all of them."""
    out = tmp_path / "out"
    out.mkdir()
    ckpt, planned = _planned(tiny, REAL, out)
    writers = open_writers(planned, out, lambda line: None)

    class Failing(RawDump):
        count = 0

        def write(self, entry, source):
            Failing.count += 1
            if Failing.count == len(ckpt.tensors) // 2:
                raise OSError("No space left on device")
            super().write(entry, source)

    writers.append(Failing(None, out, None))
    with pytest.raises(OSError, match="No space"):
        stream(ckpt, writers)
    assert listing(out) == []


def test_every_format_records_the_plan_and_base_in_what_it_writes(tiny, tmp_path):
    """Each format's provenance (GGUF keys, ONNX metadata_props, the safetensors folder's manifest) reads back the
    plan and the base the output was made from."""
    from ropeconv.positions import plan_from_json

    out = tmp_path / "out"
    assert run_cli("extend", tiny, "--method", "yarn", "--factor", "2", "--to", ",".join(REAL), "--no-verify", "-q",
                   "-o", out) == 0
    manifest = read_json(out / "manifest.json")
    written = plan_from_json(manifest["plan"])
    assert written.method == "yarn" and written.target_ctx == 2 * written.original_ctx
    for name in REAL:
        fmt = FORMATS[name]
        plan, base = fmt.recorded(fmt.artifact(out, manifest["formats"][name]))
        assert plan == written, name
        assert Path(base).resolve() == tiny.resolve(), name


def test_artifacts_are_known_by_their_record():
    assert format_of(Path("out/x-Q8_0.gguf")) is FORMATS["gguf"]
    assert artifact_format(Path("out")) is FORMATS["safetensors"]
    assert format_of(Path("out/model.raw")) is None  # only while registered


def test_a_registered_format_and_its_options_reach_every_front_end(rawdump, tiny, tmp_path, capsys):
    """Registered at run time with nothing else edited: --to's help and its own flag in `extend --help`, the flag
    refused without the format, the recipe schema (an output item with its option, run and saved back), and a
    column with its note in `ropeconv methods`."""
    capsys.readouterr()
    assert run_cli("extend", "--help") == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"comma-separated: {', '.join(FORMATS)}" in shown and list(FORMATS)[-1] == "rawdump"
    assert "--raw-endian [little|big]" in shown

    out = tmp_path / "cli"
    assert run_cli("extend", tiny, "--method", "yarn", "--factor", "2", "--to", "rawdump", "--raw-endian", "big",
                   "--no-verify", "-q", "-o", out, "--save-recipe", tmp_path / "saved.yaml") == 0
    assert read_json(out / "manifest.json")["formats"]["rawdump"]["endian"] == "big"
    saved = (tmp_path / "saved.yaml").read_text()
    assert "- format: rawdump\n  endian: big\n" in saved

    rc = run_cli("extend", tiny, "--method", "yarn", "--factor", "2", "--raw-endian", "big", "--no-verify",
                 "-o", tmp_path / "refused")
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "ropeconv: error: --raw-endian applies to the rawdump output (--to rawdump)"
    assert not (tmp_path / "refused").exists()

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base:\n  path: {tiny}\nmethod:\n  name: yarn\n  factor: 2\noutputs:\n"
                      "  - format: safetensors\n  - format: rawdump\n    endian: big\nout: rout\n"
                      "parity:\n  verify: false\n")
    assert run_cli("recipe", "run", recipe, "-q") == 0
    manifest = read_json(tmp_path / "rout" / "manifest.json")
    assert manifest["formats"]["rawdump"]["endian"] == "big" and (tmp_path / "rout" / RawDump.FILE).is_file()
    recipe.write_text(recipe.read_text().replace("- format: safetensors\n  - format: rawdump",
                                                 "- format: rawdump\n  - format: safetensors\n    endian: big"))
    assert run_cli("recipe", "check", recipe) == 2
    assert "outputs.1.endian: belongs to the rawdump output, not safetensors" in capsys.readouterr().err

    assert run_cli("methods", "--markdown") == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].endswith(" | ".join(["", *FORMATS, ""]).strip())
    assert "- rawdump column: a test format that writes the tensors back to back" in table

    # eval: a --runtime choice, found in a folder and by its suffix, run through the adapter its record names
    assert run_cli("eval", "passkey", "--help") == 0
    assert re.search(r"\[auto\|hf\|onnx\|gguf(\|\w+)*\|raw(\|\w+)*\]", " ".join(capsys.readouterr().out.split()))
    assert run_cli("eval", "passkey", out / RawDump.FILE, "--lengths", "300", "--trials", "2", "--json", "-q",
                   "--cache-dir", tmp_path / "cache") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runtime"] == FORMATS["rawdump"].runtime and doc["summary"]["accuracy"] == 1.0 and SEEN["eval"].runtime == "raw"
    assert run_cli("eval", "passkey", out, "--runtime", "raw", "--lengths", "300", "--trials", "1", "-q",
                   "--cache-dir", tmp_path / "cache2") == 0
    assert SEEN["eval"].path == out / RawDump.FILE


def test_the_front_ends_forget_a_format_unregistered(tiny, tmp_path, capsys):
    capsys.readouterr()
    assert run_cli("extend", "--help") == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"comma-separated: {', '.join(FORMATS)} (default" in shown and "--raw-endian" not in shown
