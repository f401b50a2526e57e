"""Give a model's memory back between the reference and the candidates (torch loads only when called)."""

from __future__ import annotations

import gc


def free(model) -> None:
    """Drop a model's memory; the caller must hold no other reference to it (set its name to None first, then
    call release(), where a name in the caller's frame would keep it alive)."""
    del model
    release()


def release() -> None:
    """Collect what was freed (accelerate's hooks make cycles that reference counting alone does not undo)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
