"""The recipe schema (pydantic v2). The method section is a tagged union with one type per method module,
built from the module's own OPTIONS: adding a method adds its recipe type."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model

from ropeconv import methods
from ropeconv.formats import GGUF_ALL_OUTTYPES as ALL_OUTTYPES
from ropeconv.formats import ONNX_DTYPES as DTYPES
from ropeconv.inputfile import MAX_PATH_CHARS
from ropeconv.methods.base import MAX_CTX
from ropeconv.parity.report import Tolerance


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a whole number, not true/false")
    return value


def _path_text(text: str) -> str:
    if "\0" in text:
        raise ValueError("a file name cannot hold a NUL byte")
    return text


# a path written in a recipe: text any system call can take (a NUL byte would raise ValueError in the first one)
PathText = Annotated[str, Field(max_length=MAX_PATH_CHARS), AfterValidator(_path_text)]
# a count of tokens: positions are int32 in every runtime
Length = Annotated[int, Field(gt=0, le=MAX_CTX), BeforeValidator(_not_bool)]


class Strict(BaseModel):
    # no inf/nan anywhere: YAML's .inf and an overflowing 1e400 are refused with their path
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Base(Strict):
    path: PathText = Field(description="a HuggingFace model directory or a GGUF file (relative to the recipe)")
    original_ctx: Length | None = Field(None, description="override the original context the config states")
    rebase: bool = False
    allow_pickle: bool = False


class Lora(Strict):
    path: PathText = Field(description="a PEFT LoRA adapter directory (relative to the recipe)")
    trained_with: str | None = Field(None, description="METHOD[:FACTOR] when the adapter does not record it")


class Output(Strict):
    format: Literal["safetensors", "gguf", "onnx"]
    outtype: Literal[tuple(ALL_OUTTYPES)] | None = Field(None, description="GGUF weight type (HF base only)")  # type: ignore[valid-type]
    imatrix: PathText | None = Field(None, description="GGUF: an importance matrix for llama.cpp's quantizer "
                                     "(relative to the recipe)")
    dtype: Literal[tuple(DTYPES)] | None = Field(None, description="ONNX weight storage")  # type: ignore[valid-type]


class Parity(Strict):
    verify: bool = Field(True, description="prove every output before publishing (the gate: exit 1 on failure)")
    max_abs_logit: float = Field(Tolerance.max_abs_logit, gt=0)
    tokens: Length | None = Field(None, ge=2, description="probe length (default 1.5× the original context)")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class Card(Strict):
    title: str | None = None
    description: str | None = None
    license: str | None = Field(None, description="Hub license identifier (default: the base card's)")
    tags: list[str] = []
    base_model: str | None = Field(None, description="the base's Hub id, which links the output to it on the Hub")


_KINDS: dict[type, Any] = {int: int, float: float, bool: bool, Path: PathText}


def _method_model(module) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "name": (Literal[module.NAME], ...),
        "factor": (float | None, Field(None, gt=1)),
        "target_ctx": (Length | None, Field(None)),
    }
    for opt in module.OPTIONS:
        fields[opt.name] = (_KINDS[opt.kind] | None, Field(None, description=opt.help))
    title = "".join(part.title() for part in module.NAME.split("_")) + "Method"
    return create_model(title, __base__=Strict, __doc__=module.SUMMARY, **fields)


METHOD_MODELS = {m.NAME: _method_model(m) for m in methods.ordered()}
Method = Annotated[Union[tuple(METHOD_MODELS.values())], Field(discriminator="name")]  # type: ignore[valid-type]  # noqa: UP007 - a Union built from a tuple has no X | Y spelling


class Recipe(Strict):
    base: Base
    lora: list[Lora] = []
    method: Method
    outputs: list[Output] = Field(min_length=1)
    out: PathText = Field(description="the output directory (a .gguf file for a GGUF base; relative to the recipe)")
    max_shard_size: str = "5GB"
    force_method: bool = False
    parity: Parity = Parity()
    card: Card = Card()
    name: str | None = Field(None, description="the output model's name: GGUF general.name and file name, card title")

    def path_options(self) -> dict[str, str]:
        """Method options that name files (resolved against the recipe's folder)."""
        module = methods.get(self.method.name)
        return {o.name: getattr(self.method, o.name) for o in module.OPTIONS
                if o.kind is Path and getattr(self.method, o.name) is not None}
