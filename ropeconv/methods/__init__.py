"""Method registry: every module in this package that defines NAME and plan() is a method.

Adding a method is one file here (and its test); the CLI options and the capability matrix follow.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ropeconv.errors import InputError

_SKIP = {"base"}


def _discover() -> dict[str, ModuleType]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in _SKIP or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "plan"):
            found[module.NAME] = module
    return found


METHODS: dict[str, ModuleType] = _discover()
# The order the papers introduced them, for help text and the matrix.
ORDER = ["linear", "ntk", "dynamic", "yarn", "longrope", "llama3", "freqs", "alibi", "absolute", "none"]


def ordered() -> list[ModuleType]:
    known = [METHODS[n] for n in ORDER if n in METHODS]
    return known + [m for n, m in sorted(METHODS.items()) if n not in ORDER]


def get(name: str) -> ModuleType:
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; choose from {', '.join(m.NAME for m in ordered())}") from None


def positions_of(module: ModuleType) -> tuple[str, ...]:
    """The position schemes a method acts on (RoPE unless it says otherwise)."""
    return getattr(module, "POSITIONS", ("rope",))


def check_applies(module: ModuleType, scheme, model_type: str) -> None:
    if scheme.kind not in positions_of(module):
        fitting = [m.NAME for m in ordered() if scheme.kind in positions_of(m) and m.NAME != "none"]
        raise InputError(f"--method {module.NAME} acts on {' or '.join(positions_of(module))} positions; "
                         f"{model_type} uses {scheme.kind}: use --method {' or '.join(fitting)}")


def check_request(module: ModuleType, request) -> None:
    """What the method refuses in a request before any checkpoint is read (recipe check and run share it;
    the method's plan() runs the same checks again)."""
    from ropeconv.methods.base import check_request as check_common

    check_common(request, takes_length=getattr(module, "TAKES_LENGTH", True))
    own = getattr(module, "check", None)
    if own is not None:
        own(request)
