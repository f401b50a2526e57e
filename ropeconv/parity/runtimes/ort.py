"""onnxruntime running an exported decoder: the probe's prefill, then its decode steps one token at a
time through the KV cache (past_key_values.* fed back from present.*), as a generation loop runs it.

The CPU provider always runs; on a machine with a GPU the CUDA provider runs as well (TF32 off, as for
the reference), and its rows are marked cuda-.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ropeconv.errors import InputError

NAME = "onnxruntime"
INSTALL_HINT = "pip install 'ropeconv[onnx]' (or 'ropeconv[gpu]' for onnxruntime-gpu and its CUDA provider)"


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise InputError(f"onnxruntime is not installed; {INSTALL_HINT}") from None
    return onnxruntime


def providers(device: torch.device) -> list[str]:
    """The providers a verify runs on this device: CPU always, CUDA too when the device is a GPU."""
    if device.type != "cuda":
        return ["cpu"]
    if "CUDAExecutionProvider" not in _ort().get_available_providers():
        raise InputError(f"onnxruntime here has no CUDA provider; {INSTALL_HINT}, or verify with --device cpu")
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


def decode(decoder: Decoder, ids: torch.Tensor, positions: torch.Tensor, decode_steps: int) -> torch.Tensor:
    """Prefill all but the last decode_steps tokens, then one token per call."""
    decoder.reset()
    ids_np, pos_np = ids.numpy(), positions.numpy()
    prefill = ids_np.shape[1] - decode_steps
    chunks = [decoder.step(ids_np[:, :prefill], pos_np[:, :prefill])]
    for i in range(prefill, ids_np.shape[1]):
        chunks.append(decoder.step(ids_np[:, i : i + 1], pos_np[:, i : i + 1]))
    return torch.from_numpy(np.concatenate(chunks)).float()


def run_passes(artifact: Path, device: torch.device, ids: torch.Tensor, passes, provider: str = "cpu"):
    decoder = Decoder(session(artifact, provider))
    return [decode(decoder, ids[:, : p.n_tokens], p.position_ids(), p.decode_steps) for p in passes]
