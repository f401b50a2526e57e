"""All position math lives here: exporters and the parity checker read it, nobody re-derives it."""

from ropeconv.positions.plan import (
    AbsolutePlan,
    AbsoluteScheme,
    AlibiPlan,
    AlibiScheme,
    LengthRule,
    PositionPlan,
    PositionScheme,
    RopePlan,
    RopeScheme,
    plan_from_json,
)
from ropeconv.positions.rope import attention_factor_at, default_inv_freq, inv_freq_at

__all__ = [
    "AbsolutePlan",
    "AbsoluteScheme",
    "AlibiPlan",
    "AlibiScheme",
    "PositionPlan",
    "PositionScheme",
    "plan_from_json",
    "LengthRule",
    "RopePlan",
    "RopeScheme",
    "attention_factor_at",
    "default_inv_freq",
    "inv_freq_at",
]
