"""Run saved transformers models in another Python environment (transformers 4.x) and write their logits.

ropeconv is not installed there, so this file is run by path and imports only torch, transformers and numpy
(and, for an output whose config.json records ropeconv_alibi_scaling, ropeconv.runtime from the source tree
named in the request: the call a 4.x user makes to load such an output). The comparison with the reference
stays in ropeconv (ropeconv.parity.tf4); this only loads and runs.

    python tf4_runner.py REQUEST.json

REQUEST: {"jobs": [{"model": DIR, "ids": IDS.npy, "out": PREFIX, "passes": [[first_position, n_tokens,
[[start, end], ...]], ...], "attn_implementation": NAME or null}], "ropeconv_src": DIR or null}.
For job j and pass k the logits [n_tokens, vocab] (float32) go to f"{PREFIX}-{k}.npy", written row block by row
block into the file (a full-length probe's logits need not fit in memory); each pass feeds its [start, end) token
spans one call after the other through the KV cache (the prefill chunks, then one token per decode step: as
ropeconv.parity.runtimes.hf runs it). stdout: one JSON line with the versions. stderr: a "progress: …" line per
pass. Exit 3: the environment cannot import its libraries.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from typing import Any

ALIBI_KEY = "ropeconv_alibi_scaling"

try:
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
except Exception as exc:  # any import failure means the environment is unusable, not the model
    print(f"cannot import torch/transformers/numpy: {exc}", file=sys.stderr)
    sys.exit(3)


def load(model_dir: str, attention: str | None, ropeconv_src: str | None):
    kwargs = {"attn_implementation": attention} if attention else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs).eval()
    if getattr(model.config, ALIBI_KEY, None):
        if ropeconv_src and ropeconv_src not in sys.path:
            sys.path.append(ropeconv_src)  # last: this environment's own packages keep precedence
        import ropeconv.runtime

        ropeconv.runtime.apply(model)
    return model


@torch.no_grad()
def run_pass(model, ids: torch.Tensor, first: int, spans: list, out_file: str) -> None:
    params = inspect.signature(model.forward).parameters
    positions = torch.arange(first, first + ids.shape[1]).unsqueeze(0)
    # ALiBi models take no position ids: their bias depends on distances only
    pos = (lambda a, b: {"position_ids": positions[:, a:b]}) if "position_ids" in params else (lambda a, b: {})
    cache_kw = "cache" if "cache" in params else "past_key_values"
    rows = None
    past = None
    for a, b in spans:
        cached: dict[str, Any] = {cache_kw: past} if past is not None else {}
        out = model(input_ids=ids[:, a:b], use_cache=len(spans) > 1, **pos(a, b), **cached)
        logits = out.logits[0].float().numpy()
        if rows is None:
            rows = np.lib.format.open_memmap(out_file, mode="w+", dtype=np.float32,
                                             shape=(ids.shape[1], logits.shape[-1]))
        rows[a:b] = logits
        past = getattr(out, "cache", None) or out.past_key_values
    assert rows is not None  # a pass has at least one span
    rows.flush()
    del rows


def main(request_path: str) -> None:
    request = json.loads(open(request_path, encoding="utf-8").read())
    jobs = request["jobs"]
    for j, job in enumerate(jobs):
        model = load(job["model"], job.get("attn_implementation"), request.get("ropeconv_src"))
        ids = torch.from_numpy(np.load(job["ids"]))
        for k, (first, n_tokens, spans) in enumerate(job["passes"]):
            start = time.monotonic()
            run_pass(model, ids[:, :n_tokens], first, spans, f"{job['out']}-{k}.npy")
            print(f"progress: model {j + 1}/{len(jobs)} pass {k + 1}/{len(job['passes'])}: {n_tokens} tokens at "
                  f"positions {first}–{first + n_tokens - 1} done in {time.monotonic() - start:.1f} s",
                  file=sys.stderr, flush=True)
        del model
    print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main(sys.argv[1])
