"""A small ONNX graph builder: nodes appended in order, names deterministic (byte-identical reruns)."""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper


class GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[NodeProto] = []
        self.constants: list[TensorProto] = []  # small values that live inside the graph proto
        self._count = 0
        self._const_cache: dict[tuple, str] = {}

    def _fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}/{self._count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, n_out: int = 1, **attrs: Any):
        outputs = [self._fresh(hint or op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self._fresh(f"node/{op_type}"), **attrs))
        return outputs[0] if n_out == 1 else outputs

    def op_into(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        """A node writing a named value (a graph output)."""
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self._fresh(f"node/{op_type}"), **attrs))
        return output

    def const(self, value: Any, dtype: Any = np.float32, name: str | None = None) -> str:
        """A constant tensor; unnamed ones are shared by value."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if name is None and key in self._const_cache:
            return self._const_cache[key]
        tensor_name = name or self._fresh("const")
        self.constants.append(numpy_helper.from_array(array, tensor_name))
        if name is None:
            self._const_cache[key] = tensor_name
        return tensor_name

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    # composite helpers used across the decoder
    def linear(self, x: str, weight_t: str, bias: str | None) -> str:
        y = self.op("MatMul", [x, weight_t])
        return self.op("Add", [y, bias]) if bias else y

    def slice_last(self, x: str, start: int, end: int) -> str:
        return self.op("Slice", [x, self.ints(start), self.ints(end), self.ints(-1)])


FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
DOUBLE = TensorProto.DOUBLE
INT32 = TensorProto.INT32
INT64 = TensorProto.INT64
BOOL = TensorProto.BOOL
