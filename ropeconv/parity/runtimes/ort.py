"""onnxruntime running an exported decoder: the probe's prefill, then its decode steps one token at a
time through the KV cache (past_key_values.* fed back from present.*), as a generation loop runs it.

The CPU provider always runs; on a machine with a GPU the CUDA provider runs as well (TF32 off, as for
the reference), and its rows are marked cuda-. RUNTIME is this engine behind the Runtime interface (base.py):
its targets are the providers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ropeconv.errors import InputError
from ropeconv.parity.runtimes.base import RuntimeBase

NAME = "onnxruntime"
# the weights plus activations and the KV cache of a long probe: a session needs more than the file's size
GPU_WEIGHT_MARGIN = 1.5
INSTALL_HINT = "pip install 'ropeconv[onnx]' (or 'ropeconv[gpu]' for onnxruntime-gpu and its CUDA provider)"


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise InputError(f"onnxruntime is not installed; {INSTALL_HINT}") from None
    return onnxruntime


def providers(device: torch.device, artifact: Path | None = None) -> list[str]:
    """The providers a verify runs on this device: CPU always, CUDA too when the device is a GPU (and, given the
    artifact, when its weights fit the GPU: see fits_gpu)."""
    if device.type != "cuda":
        return ["cpu"]
    if "CUDAExecutionProvider" not in _ort().get_available_providers():
        raise InputError(f"onnxruntime here has no CUDA provider; {INSTALL_HINT}, or verify with --device cpu")
    if artifact is not None and not fits_gpu(artifact, device)[0]:
        return ["cpu"]
    return ["cpu", "cuda"]


def session(path: Path, provider: str = "cpu"):
    ort = _ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if provider == "cuda":
        chosen = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    else:
        chosen = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own exception types for unloadable models
        raise InputError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:300]})") from None


class Decoder:
    """One sequence through a session, carrying the KV cache between calls."""

    def __init__(self, sess) -> None:
        self.sess = sess
        inputs = {i.name: i for i in sess.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.takes_positions = "position_ids" in inputs  # ALiBi graphs have none (the bias comes from the mask)
        shape = inputs[self.past_names[0]].shape  # [batch, kv_heads, past, head_dim]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        # the KV cache is in the graph's compute dtype (float16 for --dtype fp16)
        self.kv_dtype = np.float16 if inputs[self.past_names[0]].type == "tensor(float16)" else np.float32
        self.outputs = [o.name for o in sess.get_outputs()]
        self.reset()

    def reset(self) -> None:
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=self.kv_dtype)
        self.past = {n: empty for n in self.past_names}
        self.length = 0

    def step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """ids, positions: [1, n]; returns logits [n, vocab] and keeps the cache."""
        n = ids.shape[1]
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((1, self.length + n), dtype=np.int64),
                 **self.past}
        if self.takes_positions:
            feeds["position_ids"] = positions.astype(np.int64)
        out = dict(zip(self.outputs, self.sess.run(None, feeds)))
        self.past = {n: out[n.replace("past_key_values.", "present.")] for n in self.past_names}
        self.length += n
        return out["logits"][0].astype(np.float32, copy=False)


def decode(decoder: Decoder, ids: torch.Tensor, positions: torch.Tensor, decode_steps: int, chunk_tokens: int = 0,
           scratch: Path | None = None, lead_tokens: int = 0) -> torch.Tensor:
    """Prefill all but the last decode_steps tokens (in calls of chunk_tokens through the KV cache when given),
    then one token per call."""
    from ropeconv.parity.logit_rows import allocate
    from ropeconv.parity.probe import Pass

    decoder.reset()
    ids_np, pos_np = ids.numpy(), positions.numpy()
    n = ids_np.shape[1]
    rows = None
    for a, b in Pass("", 0, n, decode_steps, chunk_tokens, lead_tokens).prefill_chunks():
        chunk = decoder.step(ids_np[:, a:b], pos_np[:, a:b])
        if rows is None:
            rows = allocate(n, chunk.shape[-1], scratch)
        rows[a:b] = chunk
    decoder.reset()  # the cache of a long probe is GBs
    return torch.from_numpy(rows)


def fits_gpu(artifact: Path, device: torch.device) -> tuple[bool, str]:
    """Whether the ONNX weights (model.onnx and its external data) fit the GPU's free memory, with room for the
    activations; when not, why, for the report."""
    path = Path(artifact)
    weights = sum(p.stat().st_size for p in (path, path.with_name(path.name + ".data")) if p.is_file())
    free = torch.cuda.mem_get_info(device.index or 0)[0]
    if weights * GPU_WEIGHT_MARGIN <= free:
        return True, ""
    gib = 1024**3
    return False, (f"the CUDA provider was skipped: {path.name} holds {weights / gib:.1f} GiB of weights and the GPU "
                   f"has {free / gib:.1f} GiB free; onnxruntime ran it on the CPU provider only")


def run_passes(artifact: Path, device: torch.device, ids: torch.Tensor, passes, *, provider: str = "cpu",
               scratch: Path | None = None, progress=None, **_placement) -> list[torch.Tensor]:
    return RUNTIME.run_passes(artifact, device, ids, passes, target=provider, scratch=scratch, progress=progress)


class OrtRuntime(RuntimeBase):
    """onnxruntime: a Decoder over a session on one provider (a target); the CPU provider always, CUDA as well on
    a GPU machine when the weights fit it (else a note says why it was skipped)."""

    name = NAME

    def require(self) -> None:
        _ort()

    def targets(self, device, artifact=None):
        return tuple(providers(device, artifact))

    def load(self, artifact, device, *, target=None, n_ctx=0, placement=None, scratch=None,
             progress=lambda _: None):
        return Decoder(session(artifact, target or "cpu"))

    def logits(self, loaded, input_ids, position_ids, *, decode_steps=0, chunk_tokens=0, lead_tokens=0,
               scratch=None):
        return decode(loaded, input_ids, position_ids, decode_steps, chunk_tokens, scratch, lead_tokens)

    def close(self, loaded) -> None:
        loaded.reset()  # the cache of a long probe is GBs; the session goes with the last reference

    def row_prefix(self, target):
        return f"{target}-" if target not in (None, "cpu") else ""

    def ran_on(self, device, targets):
        return "+".join(t for t in targets if t)

    def fallback_notes(self, device, artifact, targets):
        if device.type == "cuda" and "cuda" not in targets:
            return (fits_gpu(Path(artifact), device)[1],)
        return ()


RUNTIME = OrtRuntime()
