"""Evaluation adapters over the runtimes: tokenizer, greedy generation and per-token log-probabilities.

Each adapter runs a model the way its users would run it, through the same runtime interface parity uses
(ropeconv.parity.runtimes.base.Runtime: `load`, `logits`, `close`, `require`), picked by the format it runs: each
format's record names its --runtime choice, where its artifact lies and its adapter (formats.EvalSpec), and
kinds() reads them from the registry:

* ``hf``   — an output (or base) directory with config.json + weights: transformers (its runtime applies
  ropeconv's ALiBi scaling), tokenizer from the directory;
* ``onnx`` — a ``.onnx`` file (or an output directory's onnx/model.onnx): onnxruntime through its decoder with
  its KV cache, tokenizer from the folder holding model.onnx;
* ``gguf`` — a ``.gguf`` file: llama.cpp, with llama.cpp's own tokenizer (``Llama.tokenize``/``detokenize``),
  never the HF one.

Tokenization: ``tokenize`` adds what the model's tokenizer adds by default (BOS where it is configured to);
``tokenize_plain`` adds nothing; ``bos_id`` is the token ``tokenize`` prepends, or None.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ropeconv.errors import InputError
from ropeconv.formats import FORMATS, EvalSpec, Format, format_of
from ropeconv.formats.safetensors import WEIGHT_GLOBS

if TYPE_CHECKING:
    import torch

    from ropeconv.parity.runtimes.base import Runtime

def kinds() -> dict[str, Format]:
    """--runtime's choices (also ModelRef.runtime and the result caches' keys), each → the format whose artifact it
    runs, from the format registry (formats.Format.eval) when asked: a format registered later counts."""
    found = sorted((f for f in FORMATS.values() if f.eval is not None), key=lambda f: spec(f).rank)
    return {spec(f).kind: f for f in found}


def spec(fmt: Format) -> EvalSpec:
    """The eval record of a format kinds() lists."""
    assert fmt.eval is not None, fmt.name
    return fmt.eval


def spec_of(kind: str) -> EvalSpec:
    """The eval record of a --runtime choice: a format's (kinds()), or a serving engine's (eval.serving)."""
    from ropeconv.eval.serving import SERVING

    return SERVING[kind].spec if kind in SERVING else spec(kinds()[kind])


def runtime_choices() -> tuple[str, ...]:
    from ropeconv.eval.serving import SERVING

    return ("auto", *kinds(), *SERVING)


def runtime_name(kind: str) -> str:
    """As reports name a runtime: "transformers", "llama.cpp", "onnxruntime" (formats.Format.runtime), "vLLM"."""
    from ropeconv.eval.serving import SERVING

    return SERVING[kind].runtime if kind in SERVING else kinds()[kind].runtime


def engine(kind: str) -> Runtime:
    """The runtime (ropeconv.parity.runtimes) a format's --runtime choice runs in; imports its engine's modules."""
    from ropeconv.parity.runtimes import runtime_of

    return runtime_of(kinds()[kind])


def _no_grad(method):
    """torch.no_grad() for a method, with torch imported when it runs: `ropeconv eval --help` needs no torch."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return method(*args, **kwargs)
    return wrapper


@dataclass(frozen=True)
class ModelRef:
    """A model as given on the command line, resolved to a runtime and the file or directory it loads."""

    given: Path
    runtime: str  # hf | onnx | gguf
    path: Path  # hf: the directory; onnx: model.onnx; gguf: the .gguf file

    @property
    def runtime_name(self) -> str:
        return runtime_name(self.runtime)


def resolve(model: Path, runtime: str = "auto") -> ModelRef:
    """Pick the runtime from the path (or check the one asked for) without loading anything."""
    from ropeconv.eval.serving import SERVING

    model = Path(model)
    found = kinds()
    if runtime not in runtime_choices():
        raise InputError(f"--runtime must be one of {', '.join(runtime_choices())}, got {runtime!r}")
    if not model.exists():
        raise InputError(f"{model}: model not found")
    # a folder a format's record claims (an mlx or OpenVINO folder: config.json and weights in its engine's layout)
    # is that format's alone
    claimed = format_of(model) if model.is_dir() else None

    def find(fmt: Format | None, found_in: EvalSpec) -> Path | None:
        return None if claimed is not None and claimed is not fmt else found_in.find(model)

    if runtime in SERVING:  # a serving engine, asked for by name: the folder of the format it serves
        served = SERVING[runtime].spec
        path = find(None, served) if model.is_dir() else None
        if path is None:
            raise InputError(f"{model}: no model for --runtime {runtime} here (expected {served.wanted})")
        ref = ModelRef(model, runtime, path)
    elif model.is_file():
        fmt = format_of(model)
        if fmt is None or fmt.eval is None:
            raise InputError(f"{model}: not a model (expected a directory, "
                             f"{' or '.join(f'a {f.suffix}' for f in found.values() if f.suffix)} file)")
        kind = fmt.eval.kind
        if runtime not in ("auto", kind):
            raise InputError(f"{model}: a {model.suffix} file cannot run in --runtime {runtime}")
        ref = ModelRef(model, kind, model)
    else:
        asked = list(found.values()) if runtime == "auto" else [found[runtime]]  # in rank order
        candidates = {spec(f).kind: find(f, spec(f)) for f in asked}  # every one looked for: an ambiguity refuses
        chosen = next((kind for kind, path in candidates.items() if path is not None), None)
        if chosen is None:
            wanted = (", ".join(spec(f).wanted for f in asked[:-1]) + f" or {spec(asked[-1]).wanted}"
                      if len(asked) > 1 else spec(asked[0]).wanted)
            raise InputError(f"{model}: no model for --runtime {runtime} here (expected {wanted})")
        found_path = candidates[chosen]
        assert found_path is not None
        ref = ModelRef(model, chosen, found_path)
    require_runtime(ref.runtime)
    return ref


def require_runtime(kind: str) -> None:
    """InputError (with the install hint) when the runtime's package is missing."""
    from ropeconv.eval.serving import SERVING

    if kind in SERVING:
        SERVING[kind].require()
    else:
        engine(kind).require()


def model_hash(ref: ModelRef) -> str:
    """sha256 of the output's manifest.json when there is one, else of its config and weight names/sizes
    (for a bare GGUF: its name, size and first MiB, which holds the metadata). Cheap: no weights are read."""
    from ropeconv.manifest import sha256_file

    h = hashlib.sha256(ref.runtime.encode())
    # an output directory's manifest: the directory itself (transformers), above mlx/ or openvino/, beside a .gguf,
    # or above onnx/
    homes = (ref.path, ref.path.parent) if ref.path.is_dir() else (ref.path.parent, ref.path.parent.parent)
    for directory in homes:
        manifest = directory / "manifest.json"
        if manifest.is_file() and (directory == ref.path or _lists(manifest, ref.path)):
            h.update(bytes.fromhex(sha256_file(manifest)))  # streamed: a manifest of any size costs no memory
            # the manifest covers every format of the output: say which file runs
            h.update(str(ref.path.resolve().relative_to(directory.resolve())).encode())
            return h.hexdigest()
    if spec_of(ref.runtime).header_identifies:
        h.update(ref.path.name.encode() + str(ref.path.stat().st_size).encode())
        with open(ref.path, "rb") as f:
            h.update(f.read(1 << 20))
        return h.hexdigest()
    directory = ref.path if ref.path.is_dir() else ref.path.parent
    config = directory / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    files = [ref.path] if ref.path.is_file() else [p for g in WEIGHT_GLOBS for p in directory.glob(g)]
    for p in sorted(files):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()


def _lists(manifest: Path, artifact: Path) -> bool:
    """The output's manifest lists the artifact (a file, or files under a folder such as mlx/): it covers it."""
    from ropeconv.manifest import read_manifest

    files = (read_manifest(manifest.parent) or {}).get("files") or []
    rel = artifact.resolve().relative_to(manifest.parent.resolve()).as_posix()
    return any(isinstance(f, str) and (f == rel or f.startswith(rel + "/")) for f in files)


def log_softmax_rows(logits, ids_next: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """log p(ids_next[i] | row i) in float64, a chunk of rows at a time (vocab × length can be GBs)."""
    import torch

    out = np.empty(len(ids_next), dtype=np.float64)
    target = torch.as_tensor(np.asarray(ids_next, dtype=np.int64))
    for a in range(0, len(ids_next), chunk):
        rows = torch.as_tensor(logits[a : a + chunk]).to(torch.float64)
        lp = torch.log_softmax(rows, dim=-1)
        out[a : a + chunk] = lp.gather(1, target[a : a + chunk, None])[:, 0].numpy()
    return out


class EvalRuntime:
    """Base of the adapters: a model opened for evaluation, its tokenizer and its runtime (`engine`). Subclasses
    load lazily: the tokenizer first, the weights on first use."""

    kind = ""

    def __init__(self, ref: ModelRef, device: torch.device, placement=None):
        self.ref, self.device = ref, device
        self.engine = engine(ref.runtime)
        self.name = self.engine.name

    # tokenizer
    bos_id: int | None = None
    eos_ids: frozenset = frozenset()

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def tokenize_plain(self, text: str) -> list[int]:
        raise NotImplementedError

    def detokenize(self, ids: list[int]) -> str:
        raise NotImplementedError

    # model
    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy: argmax each step, stopping after max_new_tokens or an end-of-sequence token."""
        raise NotImplementedError

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        """log p(ids[i] | ids[:i]) for i = 1 … n−1, positions 0 … n−1, float64 [n−1]."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _HFTokenizer:
    """transformers' tokenizer from a directory (the model's, or the one beside model.onnx)."""

    def _load_tokenizer(self, directory: Path) -> None:
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(directory)
        except Exception as exc:  # transformers raises OSError/ValueError/… for a missing or bad tokenizer
            raise InputError(f"{directory}: no usable tokenizer ({str(exc).splitlines()[0][:200]})") from None
        probe_with = self.tok("a")["input_ids"]
        probe_without = self.tok("a", add_special_tokens=False)["input_ids"]
        bos = self.tok.bos_token_id
        self.bos_id = bos if bos is not None and len(probe_with) > len(probe_without) and probe_with[0] == bos \
            else None
        eos = self.tok.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))

    def tokenize(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return ([self.bos_id] if self.bos_id is not None else []) + list(ids)

    def tokenize_plain(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def detokenize(self, ids: list[int]) -> str:
        return cast(str, self.tok.decode(ids, skip_special_tokens=True))  # one sequence in, one str out


class HFRuntime(_HFTokenizer, EvalRuntime):
    """transformers, the model placed by ropeconv.device.placement (GPUs, CPU, disk under --max-memory); a long
    prompt is prefilled through the KV cache in chunks of PREFILL_CHUNK tokens."""

    kind = "hf"

    def __init__(self, ref: ModelRef, device: torch.device, placement=None):
        super().__init__(ref, device, placement)
        self.placement = placement
        self._load_tokenizer(ref.path)
        self._model: torch.nn.Module | None = None  # loaded on first use

    @property
    def model(self):
        if self._model is None:
            import inspect

            from ropeconv.device.placement import input_device

            self._model = self.engine.load(self.ref.path, self.device, placement=self.placement)

            params = inspect.signature(self._model.forward).parameters
            self._takes_positions = "position_ids" in params
            self._keeps = "logits_to_keep" in params
            self._inputs_on = input_device(self._model)
        return self._model

    def _positions(self, start: int, n: int) -> dict:
        if not self._takes_positions:  # ALiBi: the bias depends on distances only
            return {}
        import torch

        return {"position_ids": torch.arange(start, start + n, device=self._inputs_on)[None]}

    @_no_grad
    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        import torch

        from ropeconv.parity.probe import LONG_PREFILL, PREFILL_CHUNK
        from ropeconv.parity.runtimes.hf import cache_from

        model = self.model
        x = torch.tensor([ids], device=self._inputs_on)
        step = PREFILL_CHUNK if len(ids) > LONG_PREFILL else len(ids)
        out: Any = None  # the model's output (logits, cache) of the last call
        for a in range(0, len(ids), step):
            b = min(a + step, len(ids))
            out = model(input_ids=x[:, a:b], use_cache=True, **self._positions(a, b - a),
                        **({"logits_to_keep": 1} if self._keeps else {}),
                        **(cache_from(model, out) if out is not None else {}))
        new: list[int] = []
        for step in range(max_new_tokens):
            token = int(out.logits[0, -1].argmax())
            new.append(token)
            if token in self.eos_ids or step == max_new_tokens - 1:
                break
            out = model(input_ids=torch.tensor([[token]], device=self._inputs_on), use_cache=True,
                        **self._positions(len(ids) + step, 1), **cache_from(model, out))
        return new

    @_no_grad
    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        import torch

        logits = self.engine.logits(self.model, torch.tensor([ids]), torch.arange(len(ids))[None])
        return log_softmax_rows(logits[:-1], np.asarray(ids[1:]))

    def close(self) -> None:
        if self._model is not None:
            model, self._model = self._model, None
            self.engine.close(model)


class OnnxRuntime(_HFTokenizer, EvalRuntime):
    kind = "onnx"

    def __init__(self, ref: ModelRef, device: torch.device, placement=None):
        super().__init__(ref, device, placement)
        self._load_tokenizer(ref.path.parent)
        self._decoder = None

    @property
    def decoder(self):
        if self._decoder is None:
            provider = self.engine.targets(self.device)[-1]  # cuda on a GPU, else cpu
            self._decoder = self.engine.load(self.ref.path, self.device, target=provider)
        return self._decoder

    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        decoder = self.decoder
        decoder.reset()
        logits = decoder.step(np.asarray([ids]), np.arange(len(ids))[None])
        new: list[int] = []
        for step in range(max_new_tokens):
            token = int(np.argmax(logits[-1]))
            new.append(token)
            if token in self.eos_ids or step == max_new_tokens - 1:
                break
            logits = decoder.step(np.asarray([[token]]), np.asarray([[len(ids) + step]]))
        return new

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        import torch

        # the prefill in one call, the cache dropped after it
        logits = self.engine.logits(self.decoder, torch.tensor([ids]), torch.arange(len(ids))[None])
        return log_softmax_rows(logits[:-1], np.asarray(ids[1:]))

    def close(self) -> None:
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            self.engine.close(decoder)


class GGUFRuntime(EvalRuntime):
    """llama.cpp: its own tokenizer (a vocab-only load, milliseconds) and a context grown to what is asked."""

    kind = "gguf"

    def __init__(self, ref: ModelRef, device: torch.device, placement=None):
        super().__init__(ref, device, placement)
        from ropeconv.parity.runtimes import llamacpp

        self._lc = llamacpp  # its tokenizer and Llama.eval's generation: llama.cpp's own, beyond the interface
        self.vocab = llamacpp.load_vocab(ref.path)
        self.bos_id = self.vocab.token_bos() if self.vocab._model.add_bos_token() else None
        self.eos_ids = frozenset(t for t in (self.vocab.token_eos(),) if t >= 0)
        self._handle = None

    def tokenize(self, text: str) -> list[int]:
        ids = self.vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        return ([self.bos_id] if self.bos_id is not None else []) + list(ids)

    def tokenize_plain(self, text: str) -> list[int]:
        return list(self.vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def detokenize(self, ids: list[int]) -> str:
        return self.vocab.detokenize(ids).decode("utf-8", "replace")

    def _context(self, n_tokens: int):
        if self._handle is None or self._handle.n_ctx < n_tokens:
            if self._handle is not None:
                handle, self._handle = self._handle, None
                self.engine.close(handle)
            self._handle = self.engine.load(self.ref.path, self.device, n_ctx=n_tokens)
        return self._handle

    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Llama.eval numbers tokens 0, 1, … and (logits_all off) asks llama.cpp for the last row only."""
        handle = self._context(len(ids) + max_new_tokens)
        llama, n_vocab = handle.llama, handle.n_vocab
        with self._lc.captured_log():
            llama.reset()
            llama.eval(ids)
            new: list[int] = []
            for step in range(max_new_tokens):
                row = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(n_vocab,))
                token = int(np.argmax(row))
                new.append(token)
                if token in self.eos_ids or step == max_new_tokens - 1:
                    break
                llama.eval([token])
            llama.reset()
        return new

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        import torch

        handle = self._context(len(ids))
        logits = self.engine.logits(handle, torch.tensor([ids]), torch.arange(len(ids))[None])
        return log_softmax_rows(logits[:-1], np.asarray(ids[1:]))

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            self.engine.close(handle)
        vocab, self.vocab = getattr(self, "vocab", None), None
        if vocab is not None:
            vocab.close()


def open_runtime(ref: ModelRef, device: torch.device, placement=None) -> EvalRuntime:
    """The adapter the format's record names (formats.EvalSpec.adapter); placement
    (ropeconv.device.placement.Placement): --max-memory caps, for the transformers runtime."""
    return spec_of(ref.runtime).adapter(ref, device, placement)


def describe(ref: ModelRef) -> dict:
    return {"model": str(ref.given), "file": str(ref.path), "runtime": ref.runtime_name}


def dumps(data) -> str:
    return json.dumps(data, sort_keys=True, default=str)
