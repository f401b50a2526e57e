"""The output formats, in the capability matrix's column order.

Its own module so that `ropeconv methods` reads them without importing the extend pipeline (and every
exporter it names).
"""

FORMATS = ("safetensors", "gguf", "onnx")  # the matrix's columns
