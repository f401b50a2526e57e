"""All position math lives here: exporters and the parity checker read it, nobody re-derives it."""

from ropeconv.positions.plan import LengthRule, RopePlan, RopeScheme
from ropeconv.positions.rope import attention_factor_at, default_inv_freq, inv_freq_at

__all__ = [
    "LengthRule",
    "RopePlan",
    "RopeScheme",
    "attention_factor_at",
    "default_inv_freq",
    "inv_freq_at",
]
