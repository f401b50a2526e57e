"""GGUF's value and tensor type codes and block sizes, with the standard library only: reading a GGUF's header
(inspect, a retrofit's dry run) then imports neither numpy nor gguf-py (~0.1-0.25 s). The same names and numbers as
gguf-py's (gguf.constants, which llama.cpp's ggml.h defines); a test holds them equal. IntEnum members compare and
hash as their numbers, so they mix with gguf-py's own members in comparisons and dict lookups."""

from __future__ import annotations

from enum import IntEnum


class GGUFValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


class GGMLQuantizationType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41


Q = GGMLQuantizationType
# (elements per block, bytes per block)
GGML_QUANT_SIZES: dict[GGMLQuantizationType, tuple[int, int]] = {
    Q.F32: (1, 4), Q.F16: (1, 2), Q.Q4_0: (32, 18), Q.Q4_1: (32, 20), Q.Q5_0: (32, 22), Q.Q5_1: (32, 24),
    Q.Q8_0: (32, 34), Q.Q8_1: (32, 40), Q.Q2_K: (256, 84), Q.Q3_K: (256, 110), Q.Q4_K: (256, 144), Q.Q5_K: (256, 176),
    Q.Q6_K: (256, 210), Q.Q8_K: (256, 292), Q.IQ2_XXS: (256, 66), Q.IQ2_XS: (256, 74), Q.IQ3_XXS: (256, 98),
    Q.IQ1_S: (256, 50), Q.IQ4_NL: (32, 18), Q.IQ3_S: (256, 110), Q.IQ2_S: (256, 82), Q.IQ4_XS: (256, 136),
    Q.I8: (1, 1), Q.I16: (1, 2), Q.I32: (1, 4), Q.I64: (1, 8), Q.F64: (1, 8), Q.IQ1_M: (256, 56), Q.BF16: (1, 2),
    Q.TQ1_0: (256, 54), Q.TQ2_0: (256, 66), Q.MXFP4: (32, 17), Q.NVFP4: (64, 36), Q.Q1_0: (128, 18),
}

# the value kinds methods' GGUF declarations and the layouts' hparams name
VALUE_TYPES = {"f32": GGUFValueType.FLOAT32, "u32": GGUFValueType.UINT32, "str": GGUFValueType.STRING,
               "bool": GGUFValueType.BOOL}
