"""One exception hierarchy; the CLI maps it to exit codes and one line on stderr.

Exit 2 means the input cannot be used as given (the user fixes the command or the files);
exit 1 means the work ran but the artifact does not compute what was intended.
"""


class RopeconvError(Exception):
    exit_code = 2


class InputError(RopeconvError):
    """Bad or unsupported input: a config, a file, a parameter or a combination of them."""


class UnsupportedError(InputError):
    """The input is valid but this (method, architecture, format) cell is refused."""


class DamagedPlan(InputError):
    """A ropeconv output whose recorded plan (GGUF or ONNX metadata) cannot be read back: verify refuses
    it, inspect shows the file and says so."""


class ParityError(RopeconvError):
    """The artifact's logits differ from the reference beyond tolerance."""

    exit_code = 1
