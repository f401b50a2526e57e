"""HF checkpoint ─► ONNX decoder with KV cache for onnxruntime (see export.py)."""

OPSET = 18  # LayerNormalization (17), Split's num_outputs and Reduce* axes as inputs (18)
