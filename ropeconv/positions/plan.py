"""The frozen values that flow from a checkpoint's position scheme to a method's plan."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal


class LengthRule(str, enum.Enum):
    """How the frequencies depend on the running sequence length."""

    STATIC = "static"  # one table for every length
    SWITCH = "switch"  # short divisors up to original_ctx, long divisors beyond (LongRoPE)
    DYNAMIC_NTK = "dynamic_ntk"  # base recomputed from the running length (emozilla)
    PROPORTIONAL = "proportional"  # ALiBi: slopes divided by max(1, running length / original_ctx)


@dataclass(frozen=True)
class RopeScheme:
    """The base checkpoint's rotary embedding, before any extension."""

    theta: float
    head_dim: int
    rotary_dim: int  # channels rotated per head (partial rotary: < head_dim)
    original_ctx: int  # the pretraining context the extension starts from
    declared_ctx: int  # max_position_embeddings as the base config states it
    existing_scaling: Mapping[str, Any] | None = None  # rope scaling the base already carries

    kind: ClassVar[Literal["rope"]] = "rope"

    @property
    def n_pairs(self) -> int:
        return self.rotary_dim // 2


@dataclass(frozen=True)
class AlibiScheme:
    """A base checkpoint whose attention adds −m_h·(i − j) (no position ids at all)."""

    n_heads: int
    original_ctx: int | None  # the training length the slopes were learned at (BLOOM's config states none)
    declared_ctx: int  # what the config states (MPT's max_seq_len; BLOOM states none)
    max_bias: float = 8.0
    existing_scaling: Mapping[str, Any] | None = None  # a ropeconv ALiBi scaling already in the config

    kind: ClassVar[Literal["alibi"]] = "alibi"


@dataclass(frozen=True)
class AbsoluteScheme:
    """A base checkpoint with a learned position table added to the token embeddings."""

    table: str  # the checkpoint tensor holding it
    offset: int  # rows in front of position 0 (OPT: 2)
    original_ctx: int  # positions the table covers (stored rows − offset)
    declared_ctx: int
    existing_scaling: Mapping[str, Any] | None = None

    kind: ClassVar[Literal["absolute"]] = "absolute"


@dataclass(frozen=True)
class AlibiPlan:
    """Slopes m_h (float64, before scaling) divided by `factor` (STATIC) or by max(1, n / original_ctx)
    for n keys in view (PROPORTIONAL)."""

    method: str
    slopes: tuple[float, ...]
    original_ctx: int
    target_ctx: int
    factor: float
    length_rule: LengthRule = LengthRule.STATIC
    params: Mapping[str, Any] = field(default_factory=dict)

    kind: ClassVar[Literal["alibi"]] = "alibi"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "method": self.method, "slopes": list(self.slopes),
                "original_ctx": self.original_ctx, "target_ctx": self.target_ctx, "factor": self.factor,
                "length_rule": self.length_rule.value, "params": dict(self.params)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlibiPlan:
        return cls(method=data["method"], slopes=tuple(float(x) for x in data["slopes"]),
                   original_ctx=int(data["original_ctx"]), target_ctx=int(data["target_ctx"]),
                   factor=float(data["factor"]), length_rule=LengthRule(data["length_rule"]),
                   params=dict(data.get("params", {})))


@dataclass(frozen=True)
class AbsolutePlan:
    """The position table `table` resampled from original_ctx to target_ctx rows (after `offset` kept rows)."""

    method: str
    table: str
    offset: int
    original_ctx: int
    target_ctx: int
    factor: float
    params: Mapping[str, Any] = field(default_factory=dict)

    kind: ClassVar[Literal["absolute"]] = "absolute"
    length_rule = LengthRule.STATIC

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "method": self.method, "table": self.table, "offset": self.offset,
                "original_ctx": self.original_ctx, "target_ctx": self.target_ctx, "factor": self.factor,
                "length_rule": self.length_rule.value, "params": dict(self.params)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AbsolutePlan:
        return cls(method=data["method"], table=str(data["table"]), offset=int(data["offset"]),
                   original_ctx=int(data["original_ctx"]), target_ctx=int(data["target_ctx"]),
                   factor=float(data["factor"]), params=dict(data.get("params", {})))


@dataclass(frozen=True)
class RopePlan:
    """Exact per-pair frequency divisors and attention factor that a method asks for.

    inv_freq_j = theta^(-2j/rotary_dim) / divisor_j, and cos/sin are multiplied by attention_factor.
    For LengthRule.SWITCH, `long_divisors` apply once the running length exceeds original_ctx.
    For LengthRule.DYNAMIC_NTK, the divisors are 1 and the base is recomputed per length from `factor`.
    """

    method: str
    theta: float
    rotary_dim: int
    original_ctx: int
    target_ctx: int
    factor: float
    divisors: tuple[float, ...]
    attention_factor: float = 1.0
    length_rule: LengthRule = LengthRule.STATIC
    long_divisors: tuple[float, ...] | None = None
    # The user-level parameters, normalised, for the model card, the manifest and format declarations.
    params: Mapping[str, Any] = field(default_factory=dict)

    kind: ClassVar[Literal["rope"]] = "rope"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "method": self.method,
            "theta": self.theta,
            "rotary_dim": self.rotary_dim,
            "original_ctx": self.original_ctx,
            "target_ctx": self.target_ctx,
            "factor": self.factor,
            "divisors": list(self.divisors),
            "attention_factor": self.attention_factor,
            "length_rule": self.length_rule.value,
            "long_divisors": None if self.long_divisors is None else list(self.long_divisors),
            "params": dict(self.params),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RopePlan:
        long = data.get("long_divisors")
        return cls(
            method=data["method"],
            theta=float(data["theta"]),
            rotary_dim=int(data["rotary_dim"]),
            original_ctx=int(data["original_ctx"]),
            target_ctx=int(data["target_ctx"]),
            factor=float(data["factor"]),
            divisors=tuple(float(x) for x in data["divisors"]),
            attention_factor=float(data["attention_factor"]),
            length_rule=LengthRule(data["length_rule"]),
            long_divisors=None if long is None else tuple(float(x) for x in long),
            params=dict(data.get("params", {})),
        )


PositionPlan = RopePlan | AlibiPlan | AbsolutePlan
PositionScheme = RopeScheme | AlibiScheme | AbsoluteScheme


MAX_CTX = 2**31 - 1  # positions are int32 in every runtime (methods.base refuses longer targets, recorded plans too)
MAX_ROTARY_DIM = 2**16  # channels rotated per head (real models: 32 to 512)


def plan_from_json(data: Mapping[str, Any]) -> PositionPlan:
    """Any recorded plan; records written before ALiBi and absolute tables existed have no kind: RoPE.

    A record that is not a plan (wrong types, missing keys, non-finite or non-positive numbers) raises
    ValueError, whatever is wrong with it: a recorded plan comes from a file that may be damaged."""
    kinds: dict[str, type[RopePlan] | type[AlibiPlan] | type[AbsolutePlan]] = {
        "rope": RopePlan, "alibi": AlibiPlan, "absolute": AbsolutePlan}
    try:
        if not isinstance(data, Mapping):
            raise ValueError(f"a plan is an object, not {type(data).__name__}")
        kind = data.get("kind", "rope")
        if not isinstance(kind, str) or kind not in kinds:
            raise ValueError(f"unknown plan kind {str(kind)[:40]!r}")
        plan = kinds[kind].from_json(data)
    except (KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise ValueError(f"not a plan ({type(exc).__name__}: {str(exc)[:80]})") from None
    numbers = [plan.factor] + list(getattr(plan, "divisors", ())) + list(getattr(plan, "long_divisors", None) or ()) \
        + list(getattr(plan, "slopes", ())) + [getattr(plan, "theta", 1.0), getattr(plan, "attention_factor", 1.0)]
    if not all(math.isfinite(x) for x in numbers):
        raise ValueError("the plan holds a non-finite number")
    if not (1 <= plan.original_ctx <= MAX_CTX and 1 <= plan.target_ctx <= MAX_CTX and isinstance(plan.method, str)):
        raise ValueError("the plan's lengths or method are malformed")
    if plan.kind == "rope":
        pairs = plan.rotary_dim // 2
        if not 2 <= plan.rotary_dim <= MAX_ROTARY_DIM:
            raise ValueError(f"rotary_dim {plan.rotary_dim} is not from 2 to {MAX_ROTARY_DIM}")
        lists = [plan.divisors] + ([plan.long_divisors] if plan.long_divisors is not None else [])
        if any(len(d) != pairs or min(d, default=1.0) <= 0 for d in lists):
            raise ValueError(f"its divisors are not {pairs} positive numbers (one per rotated pair)")
    return plan
