"""Apply ropeconv's ALiBi scaling to a transformers model loaded from a ropeconv output.

transformers has no config field that scales ALiBi slopes, so `ropeconv extend --method alibi` records
the scaling in config.json under `ropeconv_alibi_scaling`, which vanilla transformers ignores. Load
the model as usual, then call `apply`:

    from transformers import AutoModelForCausalLM
    import ropeconv.runtime

    model = AutoModelForCausalLM.from_pretrained("out/")
    ropeconv.runtime.apply(model)          # slopes divided as the config says, from now on

Without it the model computes the unscaled ALiBi of its base. `apply` on a model whose config has no
such key changes nothing and returns 0.

The public entry, kept under this name because the model cards ropeconv writes name it (and users' code
calls it): a re-export of ropeconv.alibi_patch, where the implementation lives.
"""

from __future__ import annotations

from ropeconv.alibi_patch import KEY, apply, install_alibi_scaling, scale_rule

__all__ = ["KEY", "apply", "install_alibi_scaling", "scale_rule"]
