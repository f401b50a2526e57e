"""ropeconv's ALiBi scaling patched into a transformers model loaded from a ropeconv output.

transformers has no config field that scales ALiBi slopes, so `ropeconv extend --method alibi` records
the scaling in config.json under `ropeconv_alibi_scaling`, which vanilla transformers ignores. `apply`
reads it and hooks every BLOOM / MPT attention block so that the bias it receives is divided as the config
says; the parity reference installs the same hooks with a plan's rule (`install_alibi_scaling`).

Users reach this through `ropeconv.runtime.apply`, the name the model cards ropeconv writes give (see
ropeconv/runtime.py); the code lives here under a name that says what it is.

Without it the model computes the unscaled ALiBi of its base. `apply` on a model whose config has no
such key changes nothing and returns 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

KEY = "ropeconv_alibi_scaling"  # {"rule": "static" | "proportional", "original_ctx": L, "factor": s}
# the block class and the keyword its model passes the bias under
_BIAS_KWARG = {"BloomBlock": "alibi", "MptBlock": "position_bias"}


def scale_rule(scaling: Mapping[str, Any]) -> Callable[[int], float]:
    """kv_len (keys in view, cache included) → the divisor of every slope."""
    from ropeconv.positions import LengthRule
    from ropeconv.positions.alibi import alibi_divisor

    try:
        rule, original, factor = scaling["rule"], int(scaling["original_ctx"]), float(scaling["factor"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{KEY} must hold rule, original_ctx and factor, got {scaling!r}") from None
    if rule not in (LengthRule.STATIC.value, LengthRule.PROPORTIONAL.value):
        raise ValueError(f"{KEY}: unknown rule {rule!r} (static or proportional)")
    return lambda kv_len: alibi_divisor(LengthRule(rule), factor, original, kv_len)


def apply(model) -> int:
    """Install the scaling the model's config records; returns the number of attention blocks hooked."""
    scaling = getattr(model.config, KEY, None)
    if not scaling:
        return 0
    return install_alibi_scaling(model, scale_rule(scaling))


def install_alibi_scaling(model, scale_at: Callable[[int], float]) -> int:
    """Divide the ALiBi bias every BLOOM / MPT block receives by scale_at(keys in view)."""
    count = 0
    for module in model.modules():
        kwarg = _BIAS_KWARG.get(type(module).__name__)
        if kwarg is None:
            continue
        module.register_forward_pre_hook(_divider(kwarg, scale_at), with_kwargs=True)
        count += 1
    if count == 0:
        raise ValueError(f"{type(model).__name__} has no BLOOM or MPT attention block to scale")
    return count


def _divider(kwarg: str, scale_at: Callable[[int], float]):
    def hook(module, args, kwargs):
        bias = kwargs.get(kwarg)
        if bias is None:
            return None
        # BLOOM's bias spans the keys in view; MPT's spans max_seq_len, so its causal mask tells the key count
        kv_len = bias.shape[-1] if kwarg == "alibi" else kwargs["attention_mask"].shape[-1]
        scale = scale_at(int(kv_len))
        if scale != 1.0:
            kwargs = dict(kwargs, **{kwarg: bias / scale})
        return args, kwargs

    return hook
