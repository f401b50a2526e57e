"""The tokenizer's files in an output: loadable by transformers 4.x, 5.x and optimum alike.

transformers 5 saves tokenizer_config.json with "tokenizer_class": "TokenizersBackend", a class 4.x does not have
(AutoTokenizer raises), and optimum's ONNX Runtime integration installs only beside 4.x. In 5.x,
PreTrainedTokenizerFast is TokenizersBackend under its old name, and 4.x's PreTrainedTokenizerFast loads
tokenizer.json as it is, so that name gives the same ids in both (tested). 5.x also records its loader's state
(is_local, local_files_only): facts about the machine that saved it, wrong on any other.
"""

from __future__ import annotations

import json

CONFIG = "tokenizer_config.json"
RENAMED = {"TokenizersBackend": "PreTrainedTokenizerFast"}  # 5.x-only name → the name both majors know
LOADER_STATE = ("is_local", "local_files_only")


def portable_config(raw: bytes, has_tokenizer_json: bool) -> bytes:
    """tokenizer_config.json as both majors read it; the bytes unchanged when nothing needs changing. A checkpoint's
    was checked when it was read (ropeconv.checkpoint.tokenizer); anything else is passed through as it is."""
    try:
        config = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(config, dict):
        return raw
    changed = dict(config)
    name = config.get("tokenizer_class")
    if name in RENAMED and has_tokenizer_json:  # without tokenizer.json the backend has nothing to load
        changed["tokenizer_class"] = RENAMED[name]
    for key in LOADER_STATE:
        changed.pop(key, None)
    if changed == config:
        return raw
    return (json.dumps(changed, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def copy_aux_files(ckpt, home) -> None:
    """The checkpoint's tokenizer, chat template and generation files into the folder `home`, as they are except a
    tokenizer_config.json that names a class only transformers 5 has (portable_config)."""
    import shutil

    for name in ckpt.aux_files:
        if name == CONFIG:
            raw = (ckpt.path / name).read_bytes()
            (home / name).write_bytes(portable_config(raw, "tokenizer.json" in ckpt.aux_files))
        else:
            shutil.copyfile(ckpt.path / name, home / name)
