"""A HuggingFace model directory as a Checkpoint: config.json plus safetensors headers.

Reads no tensor bytes (except for opt-in pickle weights, which cannot be indexed without loading).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv import jsontext
from ropeconv.checkpoint.config_values import check_values
from ropeconv.checkpoint.position_config import read_position_scheme
from ropeconv.checkpoint.safetensors_header import TensorEntry, read_header
from ropeconv.checkpoint.shapes import check_tensors
from ropeconv.checkpoint.sources import PickleSource, SafetensorsSource, TensorSource, entry_for
from ropeconv.checkpoint.tokenizer import TokenizerFiles, read_tokenizer
from ropeconv.errors import InputError
from ropeconv.families import FAMILIES
from ropeconv.families.lookup import ArchSpec, arch_for
from ropeconv.inputfile import check_regular, read_bytes
from ropeconv.positions import PositionScheme

# Files that travel with the weights unchanged.
AUX_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# real configs are kilobytes and indexes a few megabytes; the caps keep a hostile one from exhausting memory
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_INDEX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict[str, Any]
    arch: ArchSpec
    scheme: PositionScheme
    tensors: tuple[TensorEntry, ...]  # in data order: file by file, offset by offset
    weight_format: str  # "safetensors" or "pickle"
    aux_files: tuple[str, ...]
    lora: Any = None  # a ropeconv.lora.LoraMerge applied to every tensor read through open_source()

    @functools.cached_property
    def tokenizer(self) -> TokenizerFiles:
        """The tokenizer files among aux_files, checked strictly (tokenizer.json loaded by the tokenizers library,
        tokenizer.model by sentencepiece): read when first asked for — an extend that writes asks before its first
        byte (extend.from_hf.prepare), `inspect` never does (a 3.5 MB tokenizer.json costs ~0.3 s to check)."""
        return read_tokenizer(self.path, self.aux_files)

    @functools.cached_property
    def tokenizer_outline(self) -> TokenizerFiles:
        """What a dry run plans from: the same files parsed as JSON and type-checked, without loading them in
        their libraries (the strict check of `tokenizer` when that was already made)."""
        return self.__dict__.get("tokenizer") or read_tokenizer(self.path, self.aux_files, load=False)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def open_source(self) -> TensorSource:
        source: TensorSource = PickleSource(_load_pickles(self.path)) if self.weight_format == "pickle" \
            else SafetensorsSource()
        if self.lora is not None:
            from ropeconv.lora import MergedSource

            source = MergedSource(source, self.lora)
        return source


def read_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not config_path.exists():
        raise InputError(f"{path}: no config.json (expected a HuggingFace model directory)")
    config = jsontext.loads(read_bytes(config_path, MAX_CONFIG_BYTES, "config.json"), str(config_path))
    if not isinstance(config, dict):
        raise InputError(f"{config_path}: expected a JSON object")
    return config


def load_checkpoint(path: Path, *, allow_pickle: bool = False) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise InputError(missing_base(path))
    if not path.is_dir():
        raise InputError(f"{path}: expected a HuggingFace model directory")
    config = read_config(path)
    arch = arch_for(config.get("model_type"))
    safetensors_files = _safetensors_files(path, config)
    if safetensors_files:
        tensors: list[TensorEntry] = []
        for f in safetensors_files:
            tensors.extend(read_header(f)[0])
        _check_index(path, tensors)
        weight_format = "safetensors"
    else:
        pickles = _pickle_files(path)
        if not pickles:
            raise InputError(_no_weights(path))
        if not allow_pickle:
            raise InputError(
                f"{path}: weights are pickle files ({pickles[0].name}); loading pickles can run code — "
                "pass --allow-pickle to load them with torch.load(weights_only=True)"
            )
        try:
            tensors = [entry_for(n, t, f) for f in pickles for n, t in _load_pickle(f).items()]
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None
        weight_format = "pickle"
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise InputError(f"{path}: the same tensor name appears in more than one weight file")
    check_tensors(config, arch.model_type, tensors)  # before anything is sized from the config
    check_values(config, FAMILIES[arch.model_type])  # each value of the kind and range the family takes
    scheme = read_position_scheme(config, arch, tensors)
    aux = tuple(n for n in AUX_FILES if (path / n).is_file())
    return Checkpoint(path, config, arch, scheme, tuple(tensors), weight_format, aux)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def missing_base(path: Path) -> str:
    """The error for a base that is not there; a Hub id (ORG/NAME, no such local folder) gets how to fetch it: the
    commands other than `extend` and recipes (which fetch a Hub id themselves: ropeconv.hub.base) read a local
    copy."""
    text = str(path)
    if _HUB_ID.fullmatch(text) and not Path(text).parent.exists():
        name = text.split("/")[1]
        return (f"{text}: not a local folder; `ropeconv extend` and recipes fetch a Hub id, this command reads a "
                f"local copy: download it with "
                f"`hf download {text} --local-dir {name}` (or `huggingface-cli download {text} --local-dir {name}`), "
                f"then pass {name}")
    return f"{path}: base not found (a local HuggingFace model folder or a .gguf file)"


def _safetensors_files(path: Path, config: dict[str, Any]) -> list[Path]:
    """The weight files transformers loads from this folder, so that ropeconv and the parity reference read the same
    weights: model.safetensors when it exists, else the shards the index names (modeling_utils'
    _get_resolved_checkpoint_files on a local folder; a stray *.safetensors beside them is not read). [] when there
    is neither (transformers then looks for pytorch_model.bin). An index beside a model.safetensors it does not
    describe, or config.json's transformers_weights naming another file, is refused: the tools that read such a
    folder disagree on its weights."""
    if "transformers_weights" in config:
        raise InputError(f"{path / 'config.json'}: transformers_weights {str(config['transformers_weights'])[:80]!r} "
                         f"names the weights to load; ropeconv reads {SINGLE_FILE} or {INDEX_FILE} (the names its "
                         "outputs keep): rename the weights to those and remove the key")
    weight_map = _weight_map(path)
    if weight_map is not None:
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).exists()]
        if missing:
            raise InputError(f"{path / INDEX_FILE}: lists {missing[0]}, which is not in {path}")
        for f in files:
            check_regular(path / f)
    if (path / SINGLE_FILE).exists():
        if weight_map is not None and set(weight_map.values()) != {SINGLE_FILE}:
            raise InputError(f"{path}: holds both {SINGLE_FILE} and {INDEX_FILE}, which names other shards; "
                             f"transformers loads {SINGLE_FILE} and ignores the index, other tools read the shards: "
                             "remove the one that does not belong")
        return [path / SINGLE_FILE]
    return [path / f for f in files] if weight_map is not None else []


def _no_weights(path: Path) -> str:
    stray = sorted(path.glob("*.safetensors"))
    if stray:
        return (f"{path}: {stray[0].name} is neither {SINGLE_FILE} nor a shard named by {INDEX_FILE}, so transformers "
                f"would not load it: rename it to {SINGLE_FILE} (or add the index)")
    return f"{path}: no *.safetensors weights found"


def _weight_map(path: Path) -> dict[str, str] | None:
    """The index's tensor name → shard file map; None when the checkpoint has no index."""
    index = path / INDEX_FILE
    if not index.exists():
        return None
    data = jsontext.loads(read_bytes(index, MAX_INDEX_BYTES, "safetensors index"), str(index))
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{index}: not a valid safetensors index (needs a weight_map)")
    for name, file in weight_map.items():
        if not isinstance(file, str) or not file or "/" in file or file in (".", ".."):
            raise InputError(f"{index}: not a valid safetensors index (weight_map[{name[:80]!r}] must be a file name, "
                             f"got {str(file)[:80]!r})")
    return weight_map


def _check_index(path: Path, tensors: list[TensorEntry]) -> None:
    weight_map = _weight_map(path)
    if weight_map is None:
        return
    found = {t.name: t.file.name for t in tensors}
    for name, file in weight_map.items():
        if found.get(name) != file:
            raise InputError(f"{path / INDEX_FILE}: tensor {name[:80]!r} is mapped to {file[:80]} but is not in that file")


def pickle_weights(path: Path) -> list[Path]:
    """The pickle files loading this folder would unpickle (it has no safetensors weights), else []."""
    path = Path(path)
    if not path.is_dir() or (path / INDEX_FILE).is_file() or any(path.glob("*.safetensors")):
        return []
    return _pickle_files(path)


def _pickle_files(path: Path) -> list[Path]:
    return sorted(path.glob("pytorch_model*.bin")) or sorted(path.glob("*.bin"))


def _load_pickle(file: Path) -> dict:
    import torch

    check_regular(file)  # torch.load opens it itself, and would wait forever on a FIFO
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # pre-zipfile pickles cannot be memory-mapped
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe pickle
        raise InputError(f"{file}: cannot load with weights_only=True ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(hasattr(t, "dtype") for t in state.values()):
        raise InputError(f"{file}: not a state dict of tensors")
    return state


def _load_pickles(path: Path) -> dict:
    tensors: dict = {}
    for f in _pickle_files(path):
        tensors.update(_load_pickle(f))
    return tensors
