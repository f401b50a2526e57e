"""Where a transformers model runs: accelerate's big-model placement under --max-memory.

One module places every transformers model ropeconv runs (the parity reference, the transformers candidate,
eval's transformers runtime, the LongRoPE search): layers over every visible GPU (balanced by accelerate),
then the CPU, then disk, each under its cap. The weights stay float32 whatever the placement: a layer on
the CPU or on disk is brought to the device that runs it by accelerate's hooks, just before it runs, so
the figures are those of a model held whole (same kernels, same dtype, TF32 off on a GPU).

What must hold for a placement to run: every block that accelerate keeps whole (a decoder layer, the
embedding, the head) must fit on the device that runs it, and what goes to disk must fit the disk. A
model that cannot is refused in one line that says what it would need.

--max-memory takes DEVICE=SIZE pairs: cuda:N (or N) for one GPU, cuda for every GPU, cpu, disk; a device
left out gets what the machine has free (GPUs keep GPU_HEADROOM free for activations and the KV cache).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ropeconv.errors import InputError
from ropeconv.formats import Ref, is_gguf
from ropeconv.sizes import human_bytes, parse_bytes

if TYPE_CHECKING:
    import torch
    from torch import nn

FLAG = "--max-memory"
_KEY = re.compile(r"^(cpu|disk|cuda|cuda:\d+|\d+)$")
GPU_HEADROOM = 0.10  # of a GPU's free memory, left for activations, the KV cache and a chunk's logits
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Placement:
    """Caps per device, as given (empty: what the machine has), and where scratch folders go."""

    caps: tuple[tuple[str, int], ...] = ()  # ("cuda:0" | "cuda" | "cpu" | "disk", bytes)
    scratch_parent: Path | None = None  # disk offload and large logit stores go in a folder made here
    spec: str = ""  # --max-memory as the user wrote it, for messages
    # the output's name: scratch is `.NAME.XXXXXXXX.scratch`, which a later run holding NAME's lock clears when a
    # killed run left it (ropeconv.export.staging's leftovers)
    scratch_label: str = "ropeconv"

    def cap(self, key: str) -> int | None:
        return dict(self.caps).get(key)

    def beside(self, path: Path) -> Placement:
        """The same caps, scratch folders beside `path` (an output being written or verified)."""
        from dataclasses import replace

        path = Path(path).resolve()
        return replace(self, scratch_parent=path.parent, scratch_label=path.name)


def parse_max_memory(text: str | None) -> Placement:
    """'cuda:0=20GiB,cpu=12GiB' → Placement; None or '' → what the machine has."""
    if not text:
        return Placement()
    caps: dict[str, int] = {}
    for part in text.split(","):
        key, sep, size = part.strip().partition("=")
        key = key.strip().lower()
        if not sep or not _KEY.match(key):
            raise InputError(f"{FLAG} {text!r}: expected DEVICE=SIZE pairs like cuda:0=20GiB,cpu=12GiB "
                             "(devices: cuda:N, cuda, cpu, disk)")
        key = f"cuda:{key}" if key.isdigit() else key
        if key in caps:
            raise InputError(f"{FLAG} {text!r}: {key} given twice")
        caps[key] = parse_bytes(f"{FLAG} {key}=", size.strip())
    return Placement(tuple(caps.items()), spec=text)


def budget(placement: Placement, device: torch.device, disk_folder: Path | None = None) -> dict[Any, int]:
    """accelerate's max_memory for a run on `device`: GPU ids (every visible GPU on a cuda run), cpu, disk."""
    import psutil
    import torch

    gpu_keys = [k for k, _ in placement.caps if k.startswith("cuda")]
    if device.type != "cuda" and gpu_keys:
        raise InputError(f"{FLAG} {gpu_keys[0]}=…: this run is on the CPU (--device cpu, or no CUDA device)")
    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    for key in gpu_keys:
        if key != "cuda" and int(key.split(":")[1]) >= n_gpus:
            raise InputError(f"{FLAG} {key}=…: there {'is' if n_gpus == 1 else 'are'} {n_gpus} visible CUDA "
                             f"device{'' if n_gpus == 1 else 's'}")
    out: dict[Any, int] = {}
    for i in range(n_gpus):
        given = placement.cap(f"cuda:{i}") or placement.cap("cuda")
        out[i] = given if given is not None else int(torch.cuda.mem_get_info(i)[0] * (1 - GPU_HEADROOM))
    out["cpu"] = placement.cap("cpu") or int(psutil.virtual_memory().available)
    folder = disk_folder or placement.scratch_parent or Path(tempfile.gettempdir())
    out["disk"] = placement.cap("disk") or int(shutil.disk_usage(_existing(folder)).free)
    return out


def _existing(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return path


@dataclass(frozen=True)
class DevicePlan:
    device_map: dict[str, Any]  # module name → GPU id | "cpu" | "disk", as accelerate and transformers take it
    largest_block: tuple[str, int]  # (module name, float32 bytes): what must fit on the device that runs it
    bytes_by_device: dict[str, int]

    def describe(self) -> str:
        parts = [f"{human_bytes(n)} on {_name(d)}" for d, n in self.bytes_by_device.items() if n]
        return ", ".join(parts)

    @property
    def offloaded(self) -> bool:
        """Some weights live off the device that runs them (on disk, or on the CPU for a GPU run)."""
        where = set(self.device_map.values())
        return "disk" in where or (self.execution != "cpu" and "cpu" in where)

    @property
    def execution(self) -> Any:
        """Where offloaded blocks run: the first GPU in the map, else the CPU."""
        return next((d for d in self.device_map.values() if d not in ("cpu", "disk")), "cpu")


def _name(device: Any) -> str:
    return f"cuda:{device}" if isinstance(device, int) else str(device)


def blocks(model: nn.Module) -> list[tuple[str, int]]:
    """(name, float32 bytes) of every unit accelerate places whole: each no-split module (a decoder layer) and
    each module with weights of its own outside them (embeddings, final norm, head)."""
    no_split = set(getattr(model, "_no_split_modules", None) or [])
    found: list[tuple[str, int]] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if type(module).__name__ in no_split:
            inside.append(name)
            found.append((name, _bytes(module.parameters())))
            continue
        own = _bytes(module.parameters(recurse=False))
        if own:
            found.append((name, own))
    return found


def _bytes(params) -> int:
    return sum(p.numel() * FLOAT32_BYTES for p in params)


def plan_devices(model: nn.Module, max_memory: dict[Any, int], *, memory_only: bool = False,
                 spec: str = "") -> DevicePlan:
    """accelerate's planner over `max_memory` (GPU ids, cpu, disk), for a float32 model skeleton (meta tensors).
    Several GPUs are balanced (accelerate's get_balanced_memory), so every one of them holds layers.

    memory_only: a GGUF base, which transformers loads into memory only (its GGUF loader refuses disk offload);
    a safetensors base's disk-placed weights are read where they lie."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    gpus = [k for k in max_memory if isinstance(k, int)]
    execution: Any = gpus[0] if gpus else "cpu"
    largest = max(blocks(model), key=lambda b: b[1])
    room = max_memory[execution]
    given = f"{FLAG} {spec}: " if spec else ""
    if largest[1] > room:
        raise InputError(
            f"{given}too small for this model: its largest block ({largest[0] or 'the model'}, {human_bytes(largest[1])} "
            f"in float32) must fit whole on the device that runs it ({_name(execution)}, {human_bytes(room)} "
            f"allowed); give {_name(execution)} at least {human_bytes(largest[1] * 1.25)}")
    memory = dict(max_memory)
    if len(gpus) > 1:
        balanced = get_balanced_memory(model, max_memory={k: v for k, v in memory.items() if k != "disk"},
                                       no_split_module_classes=no_split)
        memory.update({k: min(v, memory[k]) for k, v in balanced.items() if k in memory})
    device_map = dict(infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split))
    sizes = _placed_bytes(model, device_map)
    on_disk = sizes.get("disk", 0)
    if memory_only and on_disk:
        raise InputError(f"{given}this GGUF base's float32 weights ({human_bytes(sum(sizes.values()))}) do not fit in "
                         f"{'memory under the caps' if spec else 'free memory'}, and transformers cannot offload a "
                         "GGUF's weights to disk — give GPU/cpu room for the whole model, verify against the HF "
                         "checkpoint it came from (verify --base HF_DIR), or pass --no-verify")
    return DevicePlan(device_map, largest, sizes)


def _placed_bytes(model: nn.Module, device_map: dict[str, Any]) -> dict[str, Any]:
    totals: dict[str, int] = {}
    for name, param in model.named_parameters():
        device = _device_of(name, device_map)
        totals[device] = totals.get(device, 0) + param.numel() * FLOAT32_BYTES
    return totals


def _device_of(name: str, device_map: dict[str, Any]) -> Any:
    best = max((k for k in device_map if k == "" or name == k or name.startswith(k + ".")), key=len, default="")
    return device_map.get(best, "cpu")


def _gguf_config(directory: Path, gguf_file: str):
    """transformers' config of a GGUF, with the head width the file states: transformers maps no
    attention.key_length for some architectures (qwen3) and would take its config default (128) instead; the
    experts' widths likewise."""
    from transformers import AutoConfig

    from ropeconv.errors import UnsupportedError
    from ropeconv.gguf_io.reader import read_gguf

    src = read_gguf(Path(directory) / gguf_file)
    arch = src.value("general.architecture")

    def unreadable(kind: str) -> UnsupportedError:
        return UnsupportedError(f"transformers reads no {kind[:40]} GGUF, so the reference that proves this one "
                                "cannot be built from it: prove it against its HF checkpoint (extend that with --to "
                                "gguf, or verify --base HF_DIR), or pass --no-verify")

    if arch == "llama" and src.value("llama.expert_count"):  # mixtral: transformers would build a dense llama
        raise unreadable("llama-with-experts (mixtral)")
    try:
        config = AutoConfig.from_pretrained(directory, gguf_file=gguf_file)
    except ValueError as exc:
        if "not supported" not in str(exc):
            raise
        raise unreadable(str(arch)) from None
    key_length = src.value(f"{arch}.attention.key_length")
    if isinstance(key_length, int) and getattr(config, "head_dim", key_length) != key_length:
        config.head_dim = key_length
    # nor the experts' widths (qwen2moe, qwen3moe): it would build its defaults (768, 5632) whatever the file holds
    for key, attr in (("expert_feed_forward_length", "moe_intermediate_size"),
                      ("expert_shared_feed_forward_length", "shared_expert_intermediate_size")):
        value = src.value(f"{arch}.{key}")
        if isinstance(value, int) and hasattr(config, attr):
            setattr(config, attr, value)
    from ropeconv.families.lookup import GGUF_ARCHS

    spec = GGUF_ARCHS.get(arch)
    if spec is not None and spec.transformers_fixup:
        Ref(spec.transformers_fixup)(src, config)
    return config


def skeleton(directory: Path, gguf_file: str | None = None) -> nn.Module:
    """The model with float32 meta tensors: what the planner weighs, no weights read."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = _gguf_config(directory, gguf_file) if gguf_file else AutoConfig.from_pretrained(directory)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()
    return model


def check_fits(path: Path, device: torch.device, placement: Placement | None = None) -> DevicePlan:
    """The placement a model would get, refused (InputError) when it cannot run under the caps: reads the config
    only, so a command can refuse before it writes anything."""
    placement = placement or Placement()
    path = Path(path)
    gguf_file = path.name if is_gguf(path) else None  # a GGUF base transformers dequantizes
    return plan_devices(skeleton(path.parent if gguf_file else path, gguf_file), budget(placement, device),
                        memory_only=gguf_file is not None, spec=placement.spec)


def load_placed(path: Path, device: torch.device, placement: Placement | None = None,
                scratch: Path | None = None, progress=lambda _: None) -> nn.Module:
    """A transformers causal LM (a HF directory, or a GGUF file transformers dequantizes) in float32, placed by
    accelerate under the placement's caps. Disk offload goes to `scratch`; without one, to a folder made beside
    the output (or in the system temp) that lives as long as the model."""
    import weakref

    import torch
    from transformers import AutoModelForCausalLM

    placement = placement or Placement()
    path = Path(path)
    gguf_file = path.name if is_gguf(path) else None  # a GGUF base transformers dequantizes
    directory = path.parent if gguf_file else path
    plan = plan_devices(skeleton(directory, gguf_file), budget(placement, device, scratch),
                        memory_only=gguf_file is not None, spec=placement.spec)
    if plan.offloaded or len(set(plan.device_map.values())) > 1:
        progress(f"placement: {plan.describe()}")
    kwargs: dict[str, Any] = {"dtype": torch.float32, "device_map": plan.device_map}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
        kwargs["config"] = _gguf_config(directory, gguf_file)
    if placement.caps:
        from ropeconv.device.allocator import return_freed_memory

        return_freed_memory()  # a cap is a promise about memory: freed casts must not stay with the process
    own_scratch = None
    if "disk" in plan.device_map.values():
        if scratch is None:
            scratch = own_scratch = scratch_dir(placement)
        kwargs["offload_folder"] = str(Path(scratch) / "offload")
    try:
        # accelerate warns that offloaded weights sit on the meta device: the report says where they are
        with _quiet("accelerate.big_modeling"):
            model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    except BaseException:
        if own_scratch is not None:
            shutil.rmtree(own_scratch, ignore_errors=True)
        raise
    if own_scratch is not None:
        weakref.finalize(model, shutil.rmtree, own_scratch, True)
    # what the report notes; nn.Module.__setattr__ is typed for tensors and modules, a plain attribute is fine
    model.ropeconv_placement = plan  # type: ignore[assignment]
    return model.eval()


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def input_device(model: nn.Module) -> torch.device:
    """Where a placed model takes its inputs: its first GPU, else the CPU (accelerate's hooks move them on)."""
    import torch

    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        first = next((d for d in device_map.values() if d not in ("cpu", "disk")), "cpu")
        return torch.device("cuda", first) if isinstance(first, int) else torch.device(first)
    return next(model.parameters()).device


def offloaded_names(model: nn.Module) -> set[str]:
    """Parameters that accelerate keeps off the model (meta tensors, brought in by hooks when their block runs)."""
    return {name for name, p in model.named_parameters() if p.is_meta}


def scratch_dir(placement: Placement | None) -> Path:
    """A fresh folder for disk offload and large logit stores: beside the output when there is one."""
    parent = (placement.scratch_parent if placement else None) or Path(tempfile.gettempdir())
    label = placement.scratch_label if placement else "ropeconv"
    return Path(tempfile.mkdtemp(prefix=f".{label}.", suffix=".scratch", dir=_existing(parent)))
