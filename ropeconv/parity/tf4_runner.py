"""Run saved transformers models in another Python environment (transformers 4.x) and write their logits.

ropeconv is not installed there, so this file is run by path and imports only torch, transformers and numpy
(and, for an output whose config.json records ropeconv_alibi_scaling, ropeconv.runtime from the source tree
named in the request: the call a 4.x user makes to load such an output). The comparison with the reference
stays in ropeconv (ropeconv.parity.tf4); this only loads and runs.

    python tf4_runner.py REQUEST.json

REQUEST: {"jobs": [{"model": DIR, "ids": IDS.npy, "out": PREFIX, "passes": [[first_position, n_tokens,
decode_steps], ...], "attn_implementation": NAME or null}], "ropeconv_src": DIR or null}.
For job j and pass k the logits [n_tokens, vocab] (float32) go to f"{PREFIX}-{k}.npy"; each pass is a prefill of
all but its last decode_steps tokens, then one token per call through the KV cache (as ropeconv.parity.runtimes.hf
runs it). stdout: one JSON line with the versions. stderr: a "progress: …" line per pass. Exit 3: the environment
cannot import its libraries.
"""

from __future__ import annotations

import inspect
import json
import sys
import time

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
def run_pass(model, ids: "torch.Tensor", first: int, decode_steps: int) -> "np.ndarray":
    params = inspect.signature(model.forward).parameters
    positions = torch.arange(first, first + ids.shape[1]).unsqueeze(0)
    # ALiBi models take no position ids: their bias depends on distances only
    pos = (lambda a, b: {"position_ids": positions[:, a:b]}) if "position_ids" in params else (lambda a, b: {})
    cache_kw = "cache" if "cache" in params else "past_key_values"
    prefill = ids.shape[1] - decode_steps
    out = model(input_ids=ids[:, :prefill], use_cache=decode_steps > 0, **pos(0, prefill))
    chunks = [out.logits[0].float()]
    for i in range(prefill, ids.shape[1]):
        past = getattr(out, "cache", None) or out.past_key_values
        out = model(input_ids=ids[:, i : i + 1], use_cache=True, **pos(i, i + 1), **{cache_kw: past})
        chunks.append(out.logits[0].float())
    return torch.cat(chunks).numpy()


def main(request_path: str) -> None:
    request = json.loads(open(request_path, encoding="utf-8").read())
    jobs = request["jobs"]
    for j, job in enumerate(jobs):
        model = load(job["model"], job.get("attn_implementation"), request.get("ropeconv_src"))
        ids = torch.from_numpy(np.load(job["ids"]))
        for k, (first, n_tokens, steps) in enumerate(job["passes"]):
            start = time.monotonic()
            np.save(f"{job['out']}-{k}.npy", run_pass(model, ids[:, :n_tokens], first, steps))
            print(f"progress: model {j + 1}/{len(jobs)} pass {k + 1}/{len(job['passes'])}: {n_tokens} tokens at "
                  f"positions {first}–{first + n_tokens - 1} done in {time.monotonic() - start:.1f} s",
                  file=sys.stderr, flush=True)
        del model
    print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main(sys.argv[1])
