"""What every method module shares: its request, its options, and the capability cells it declares.

A method is one module in this package with:
  NAME, SUMMARY        the CLI name and a one-line description
  OPTIONS              method-specific options (tuple of Option)
  CELLS                {format: Cell} — how each output format carries the plan
  plan(scheme, request) -> RopePlan          pure math, no weights
  hf_rope_parameters(plan) -> dict           transformers' declaration (rope_type and its keys)
  gguf_declaration(plan, arch) -> GgufDeclaration   llama.cpp's declaration, or UnsupportedError
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ropeconv import jsontext
from ropeconv.errors import InputError, UnsupportedError
from ropeconv.positions import PositionScheme, RopePlan, RopeScheme
from ropeconv.positions.plan import MAX_CTX  # noqa: F401  (the recipe schema takes it from here)


class Support(str, enum.Enum):
    EXACT = "exact"
    CARRIER = "exact via carrier"
    REFUSED = "refused"


@dataclass(frozen=True)
class Cell:
    support: Support
    how: str  # the declaration used, or why it is refused and what to do instead


@dataclass(frozen=True)
class Option:
    name: str  # python name; the CLI flag is --name-with-dashes
    kind: type  # float, int, bool or Path
    help: str
    default: Any = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class ExtendRequest:
    """What the user asked for; lengths are resolved against the checkpoint by resolve_lengths."""

    factor: float | None = None
    target_ctx: int | None = None
    original_ctx: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, name: str, default: Any = None) -> Any:
        value = self.options.get(name)
        return default if value is None else value




@dataclass(frozen=True)
class Lengths:
    original_ctx: int
    target_ctx: int
    factor: float


def check_request(request: ExtendRequest, *, takes_length: bool = True) -> None:
    """Everything a request can be refused for without a checkpoint. One code path: resolve_lengths runs it
    for `extend`, and recipe loading runs it (methods.check_request) for `recipe check` and `recipe run`
    alike, so a check passes only what a run would accept up to the base's own facts."""
    original = request.original_ctx
    if original is not None and (isinstance(original, bool) or not isinstance(original, int) or original < 1):
        raise InputError(f"original context must be a positive integer, got {original}")
    if not takes_length:
        if request.factor is not None or request.target_ctx is not None:
            raise InputError("--method none keeps the original context; drop --factor / --target-ctx")
        return
    if (request.factor is None) == (request.target_ctx is None):
        raise InputError("give exactly one of --factor or --target-ctx")
    if request.factor is not None:
        factor = require_finite("--factor", request.factor)
        if factor <= 1:
            raise InputError(f"--factor must be > 1 (an extension), got {factor:g}")
        if factor > MAX_CTX:
            raise InputError(f"--factor {factor:g} gives a context beyond {MAX_CTX} tokens")
    else:
        target = request.target_ctx
        if isinstance(target, bool) or not isinstance(target, int) or target < 2:
            raise InputError(f"--target-ctx must be an integer above the original context, got {target}")
        if target > MAX_CTX:
            raise InputError(f"--target-ctx {target} is beyond {MAX_CTX} tokens")
    for name, value in request.options.items():
        if isinstance(value, float):  # every float option of every method is a positive scale
            require_positive("--" + name.replace("_", "-"), value)


def resolve_lengths(scheme: PositionScheme, request: ExtendRequest) -> Lengths:
    """Exactly one of factor / target_ctx; original from the override or the checkpoint."""
    check_request(request)
    original = request.original_ctx if request.original_ctx is not None else scheme.original_ctx
    if original is None or original < 1:
        raise InputError(f"original context must be a positive integer, got {original}")
    if request.factor is not None:
        factor = float(request.factor)
        if original * factor > MAX_CTX:
            raise InputError(f"--factor {factor:g} gives a context beyond {MAX_CTX} tokens")
        target = int(round(original * factor))
    else:
        assert request.target_ctx is not None  # check_request: exactly one of factor and target_ctx
        target = int(request.target_ctx)
        if target <= original:
            raise InputError(f"--target-ctx {target} must exceed the original context {original}")
        factor = target / original
    return Lengths(original_ctx=int(original), target_ctx=target, factor=float(factor))


def build_plan(name: str, scheme: RopeScheme, lengths: Lengths, divisors, **fields: Any) -> RopePlan:
    """A RopePlan with the fields every method fills the same way; `theta` may be overridden."""
    theta = fields.pop("theta", scheme.theta)
    return RopePlan(
        method=name,
        theta=theta,
        rotary_dim=scheme.rotary_dim,
        original_ctx=lengths.original_ctx,
        target_ctx=lengths.target_ctx,
        factor=lengths.factor,
        divisors=tuple(divisors),
        **fields,
    )


def require_finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}")
    return value


def require_positive(name: str, value: float) -> float:
    value = require_finite(name, value)
    if value <= 0:
        raise InputError(f"{name} must be > 0, got {value:g}")
    return value


# The range of a per-pair divisor λ (θ'_j = θ_j / λ_j). Runtimes compute 1/λ, λ·θ^(2j/d) and the angles p/λ in
# float32: inside [2^-10, 2^20] all three stay finite and normal for any rope_theta below 1e30 and any position
# below 2^31, whereas 5e-324 (a denormal) makes 1/λ infinite and every angle past position 0 NaN. No extension
# needs more: interpolation divides by ≥ 1 (LongRoPE searches [1, 1.25·s]), and 2^20 already stops a pair's
# rotation over any context a runtime takes.
MIN_DIVISOR = 2.0**-10
MAX_DIVISOR = 2.0**20
MAX_FACTORS_FILE_BYTES = 16 * 1024 * 1024  # a factors file is rotary_dim/2 numbers (kilobytes)


def check_factor_list(name: str, values: Any, n_pairs: int) -> tuple[float, ...]:
    """A per-pair divisor list: n_pairs finite numbers, each in [MIN_DIVISOR, MAX_DIVISOR]."""
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise InputError(f"{name} must be a list of numbers")
    if len(values) != n_pairs:
        raise InputError(f"{name} has {len(values)} values; this model's rotary dim needs {n_pairs} (rotary_dim/2)")
    out = []
    for i, v in enumerate(values):
        try:
            v = float(v)
        except OverflowError:  # a JSON integer beyond float's range
            v = math.inf
        if not MIN_DIVISOR <= v <= MAX_DIVISOR:
            raise InputError(f"{name}[{i}] = {v:g} is outside [2^-10, 2^20]: a divisor must be a number whose "
                             "reciprocal and products stay finite in float32, as runtimes compute them")
        out.append(v)
    return tuple(out)


def read_json_file(option: str, path: Path) -> Any:
    """A JSON file named by an option: a regular file of bounded size, parsed by jsontext (finite numbers, bounded
    nesting: a file nested 100k deep is one line, not a RecursionError)."""
    from ropeconv.inputfile import read_bytes

    try:
        data = read_bytes(Path(path), MAX_FACTORS_FILE_BYTES, f"{option} file")
    except InputError as exc:  # "PATH: cannot read …", said of the option
        raise InputError(f"{option} {exc}") from None
    return jsontext.loads(data, f"{option} {path}")


@dataclass(frozen=True)
class GgufDeclaration:
    """Keys are relative to the architecture ("rope.scaling.type" → "llama.rope.scaling.type");
    values are (gguf value type name, value). Tensors are F32 carriers, one value per rotary pair."""

    kv: Mapping[str, tuple[str, Any]] = field(default_factory=dict)
    tensors: Mapping[str, tuple[float, ...]] = field(default_factory=dict)


def rope_freqs_carrier(plan: RopePlan, arch: Any, what: str) -> GgufDeclaration:
    """Any static plan, exactly: llama.cpp divides θ_j by rope_freqs[j] and multiplies cos/sin by
    rope.scaling.attn_factor when no scaling type is set (ext_factor 0, freq_scale 1)."""
    if not arch.reads_rope_freqs:
        raise UnsupportedError(
            f"{what} needs a rope_freqs tensor in GGUF, which llama.cpp reads only for the llama architecture "
            f"(this is {arch.name}); use --to safetensors"
        )
    kv: dict[str, tuple[str, Any]] = {}
    if plan.attention_factor != 1.0:
        kv["rope.scaling.attn_factor"] = ("f32", plan.attention_factor)
    return GgufDeclaration(kv=kv, tensors={"rope_freqs.weight": tuple(plan.divisors)})
