"""A PEFT LoRA adapter directory: adapter_config.json + adapter_model.safetensors, read without peft.

PEFT saves, per adapted module M (a dotted path in the base model):
    base_model.model.M.lora_A.weight [r, in]     base_model.model.M.lora_B.weight [out, r]
    (embeddings: lora_embedding_A [r, vocab], lora_embedding_B [dim, r])
and, per module in modules_to_save, its whole trained weight as base_model.model.M.weight (for adapted
embeddings also the weight under the LoRA, as base_model.model.M.base_layer.weight).
scale = lora_alpha / r, or lora_alpha / √r with use_rslora; rank_pattern / alpha_pattern override r and
alpha for modules whose name matches (peft: `(.*\\.)?KEY$`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ropeconv import jsontext
from ropeconv.checkpoint.safetensors_header import TensorEntry, read_header
from ropeconv.errors import InputError
from ropeconv.inputfile import read_bytes

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ROPE_RECORD = "ropeconv_rope.json"  # the rope scaling the adapter was trained under (ropeconv finetune writes it)
PREFIX = "base_model.model."
MAX_JSON_BYTES = 16 * 1024 * 1024  # adapter_config.json is kilobytes, even with a pattern for every module
# |lora_alpha / r| at most float16's largest value: peft's defaults give 0.25–64, and a larger scale drives a
# float16 weight past its range even where B·A is of order 1 (1e308 / r overflows float32 outright)
MAX_SCALE = 65504.0
# adapter_config.json switches a plain W + s·B·A merge does not compute: refused by name
_UNSUPPORTED = {
    "use_dora": "DoRA rescales each column by a learned magnitude",
    "lora_bias": "a LoRA bias term",
    "layer_replication": "replicated layers",
    "trainable_token_indices": "trainable token rows",
    "target_parameters": "adapted nn.Parameters",
    "use_qalora": "QA-LoRA",
    "use_bdlora": "block-diagonal LoRA",
    "alora_invocation_tokens": "activated LoRA",
    "arrow_config": "Arrow routing",
}


@dataclass(frozen=True)
class LoraModule:
    module: str  # dotted path in the base model
    a_key: str
    b_key: str
    rank: int
    alpha: float
    rslora: bool
    fan_in_fan_out: bool  # the base stores this weight [in, out] (GPT-2's Conv1D)
    embedding: bool  # lora_embedding_A/B: the delta is (B·A)ᵀ on a [vocab, dim] table

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    @property
    def weight(self) -> str:
        return f"{self.module}.weight"


@dataclass(frozen=True)
class Adapter:
    path: Path
    config: Mapping[str, Any]
    modules: tuple[LoraModule, ...]
    replaced: Mapping[str, str]  # base tensor name → adapter key holding its trained replacement
    tensors: Mapping[str, TensorEntry]  # adapter key → where its bytes are
    sha256: str  # of adapter_config.json + adapter_model.safetensors
    trained_with: Mapping[str, Any] | None = field(default=None)  # ROPE_RECORD, when present


def _pattern(patterns: Mapping[re.Pattern, Any], module: str, default: Any) -> Any:
    """peft's get_pattern_key: the first key K for which (.*\\.)?(K)$ matches the module's whole name."""
    for pattern, value in patterns.items():
        if pattern.match(module):
            return value
    return default


def _read_json(path: Path, what: str) -> Any:
    return jsontext.loads(read_bytes(path, MAX_JSON_BYTES, what), f"{path}: {what}")


def _rank(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{where} must be a positive integer (a JSON number), got {_shown(value)}")
    return value


def _number(where: str, value: Any) -> float:
    """A JSON number (peft computes with lora_alpha as given: a string is no number), finite as a float."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            if math.isfinite(float(value)):
                return float(value)
        except OverflowError:  # an integer beyond float's range
            pass
    raise InputError(f"{where} must be a finite number (a JSON number), got {_shown(value)}")


def _flag(where: str, value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    raise InputError(f"{where} must be true or false, got {_shown(value)}")


def _patterns(path: Path, config: Mapping[str, Any], key: str, read) -> dict[re.Pattern, Any]:
    """rank_pattern / alpha_pattern: an object of module-name regular expressions, each compiled as peft matches it,
    to values read by `read`."""
    patterns = config.get(key)
    if patterns is None:
        return {}
    if not isinstance(patterns, dict):
        raise InputError(f"--lora {path}: {key} must be an object of module-name patterns, got {_shown(patterns)}")
    compiled = {}
    for name, value in patterns.items():
        try:
            pattern = re.compile(rf"(.*\.)?({name})$")
        except (re.error, RecursionError, OverflowError) as exc:
            raise InputError(f"--lora {path}: {key} key {_shown(name)} is not a regular expression ({exc})") from None
        compiled[pattern] = read(f"--lora {path}: {key}[{_shown(name)}]", value)
    return compiled


def _scale(where: str, alpha: float, rank: int, rslora: bool) -> float:
    scale = alpha / (math.sqrt(rank) if rslora else rank)
    if not abs(scale) <= MAX_SCALE:
        raise InputError(f"{where}: scale lora_alpha/{'√r' if rslora else 'r'} = {alpha:g}/"
                         f"{'√' if rslora else ''}{rank} = {scale:g} is outside ±{MAX_SCALE:g}")
    return scale


def check_rope_record(where: str, record: Any) -> None:
    """ROPE_RECORD as check_trained_with reads it: an object with a method name, a finite factor and a params
    object (each optional)."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: must be a JSON object (method, factor, params), got {_shown(record)}")
    if not isinstance(record.get("method", ""), str):
        raise InputError(f"{where}: method must be a method name, got {_shown(record['method'])}")
    if record.get("factor") is not None:
        _number(f"{where}: factor", record["factor"])
    if not isinstance(record.get("params") or {}, dict):
        raise InputError(f"{where}: params must be an object, got {_shown(record['params'])}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_adapter(path: Path) -> Adapter:
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"--lora {path}: not an adapter directory")
    config = _read_json(path / CONFIG_FILE, CONFIG_FILE) if (path / CONFIG_FILE).is_file() else None
    if not isinstance(config, dict):
        raise InputError(f"--lora {path}: no {CONFIG_FILE} object (expected a PEFT adapter directory)")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        other = "adapter_model.bin (pickle; re-save with safe_serialization)" if (path / "adapter_model.bin").is_file() \
            else "nothing"
        raise InputError(f"--lora {path}: no {WEIGHTS_FILE} (found {other})")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise InputError(f"--lora {path}: peft_type {kind!r}; only LORA adapters can be merged")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise InputError(f"--lora {path}: {key} ({what}) is not a plain W + s·B·A merge; merge it with peft and "
                             "pass the merged model as the base")
    if config.get("bias", "none") != "none":
        raise InputError(f"--lora {path}: bias {config['bias']!r} (trained biases) is not supported; use bias 'none'")
    for key in ("r", "lora_alpha"):
        if key not in config:
            raise InputError(f"--lora {path}: {CONFIG_FILE} needs integer r and numeric lora_alpha (no {key})")
    rank, alpha = _rank(f"--lora {path}: r", config["r"]), _number(f"--lora {path}: lora_alpha", config["lora_alpha"])
    rslora = _flag(f"--lora {path}: use_rslora", config.get("use_rslora"))
    fan_in_fan_out = _flag(f"--lora {path}: fan_in_fan_out", config.get("fan_in_fan_out"))
    entries, _ = read_header(weights)
    tensors = {e.name: e for e in entries}
    modules, replaced, seen = [], {}, set()
    rank_pattern = _patterns(path, config, "rank_pattern", _rank)
    alpha_pattern = _patterns(path, config, "alpha_pattern", _number)
    for name in tensors:
        if not name.startswith(PREFIX):
            raise InputError(f"--lora {path}: tensor {name!r} is not a PEFT key (base_model.model.…)")
        inner = name[len(PREFIX):]
        match = re.fullmatch(r"(.+)\.lora_(embedding_)?([AB])(?:\.weight)?", inner)
        if match is None:
            if inner.endswith((".weight", ".bias")) and ".lora_" not in inner:
                # modules_to_save: the module's trained weight; X.base_layer.weight: the weight under X's LoRA
                # (peft saves adapted embeddings' base so a resized vocabulary travels with the adapter)
                replaced[inner.replace(".base_layer.", ".")] = name
                continue
            raise InputError(f"--lora {path}: tensor {name!r} is not a LoRA factor or a saved module")
        module, embedding = match.group(1), bool(match.group(2))
        if module in seen:
            continue
        seen.add(module)
        stem = f"{PREFIX}{module}.lora_{'embedding_' if embedding else ''}"
        a_key, b_key = (f"{stem}A", f"{stem}B") if embedding else (f"{stem}A.weight", f"{stem}B.weight")
        missing = [k for k in (a_key, b_key) if k not in tensors]
        if missing:
            raise InputError(f"--lora {path}: {missing[0]!r} is missing (LoRA needs both A and B for {module})")
        module_rank, module_alpha = _pattern(rank_pattern, module, rank), _pattern(alpha_pattern, module, alpha)
        _scale(f"--lora {path}: {module}", module_alpha, module_rank, rslora)
        modules.append(LoraModule(module, a_key, b_key, module_rank, module_alpha, rslora, fan_in_fan_out, embedding))
    if not modules and not replaced:
        raise InputError(f"--lora {path}: {WEIGHTS_FILE} holds no LoRA factors")
    digest = hashlib.sha256((path / CONFIG_FILE).read_bytes())
    with open(weights, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    record = path / ROPE_RECORD
    trained = _read_json(record, ROPE_RECORD) if record.is_file() else None
    if trained is not None:
        check_rope_record(f"--lora {path}: {ROPE_RECORD}", trained)
    return Adapter(path, config, tuple(sorted(modules, key=lambda m: m.module)), replaced, tensors,
                   digest.hexdigest(), trained)
