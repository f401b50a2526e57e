"""One model held open in vLLM's offline engine for `ropeconv eval --runtime vllm`: requests in on stdin, answers
out on stdout, one JSON line each, until stdin closes.

vLLM pins its own torch, transformers and numpy, so it lives in .venv-vllm (`make vllm`) and this file is run there
by path: it imports the standard library and vllm only (never ropeconv). Tokenizing, scoring and caching stay in
ropeconv (ropeconv.eval.vllm_runtime); this only runs token ids.

    python vllm_worker.py MODEL_DIR MAX_MODEL_LEN DEVICE

The engine: LLM(model=MODEL_DIR, dtype="float32" on a CPU else "auto", max_model_len=MAX_MODEL_LEN,
enforce_eager=True, skip_tokenizer_init=True, seed=0) — as `vllm serve` would load it, token ids in.
Requests: {"op": "generate", "ids": [...], "max_new_tokens": N, "stop": [eos ids]} → {"tokens": [greedy ids]};
{"op": "logprobs", "ids": [...]} → {"logprob": [log p(ids[i] | ids[:i]) for i ≥ 1]} (prompt_logprobs).
vLLM writes its own logs to stdout too, so each answer is one line that starts with MARK; the first is
{"ready": versions}. Exit 3: the environment cannot import vllm.
"""

from __future__ import annotations

import json
import math
import os
import sys

MARK = "ropeconv-vllm-answer "

# run by path, this file's folder comes first on sys.path; nothing in it may shadow vllm (the engine's spawned
# processes inherit sys.path), so it is taken off
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]


def answer(record: dict) -> None:
    sys.stdout.write(MARK + json.dumps(record) + "\n")
    sys.stdout.flush()


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # NaN / inf are written as null (JSON has neither)


def main(model: str, max_model_len: int, device: str) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: the default takes a share of RAM per engine
    # a base is evaluated past its own context on purpose (the unscaled side of a comparison)
    os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    try:
        import vllm  # type: ignore[import-not-found]  # in .venv-vllm only
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt  # type: ignore[import-not-found]
    except Exception as exc:  # any import failure means the environment is unusable, not the model
        print(f"cannot import vllm: {exc}", file=sys.stderr)
        sys.exit(3)
    from importlib.metadata import version

    llm = LLM(model=model, dtype="float32" if device == "cpu" else "auto", max_model_len=max_model_len,
              enforce_eager=True, seed=0, skip_tokenizer_init=True)
    answer({"ready": {"vllm": vllm.__version__, "transformers": version("transformers"),
                      "max_model_len": llm.llm_engine.model_config.max_model_len}})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        prompt = TokensPrompt(prompt_token_ids=[int(i) for i in request["ids"]])
        if request["op"] == "generate":
            params = SamplingParams(max_tokens=int(request["max_new_tokens"]), temperature=0.0, detokenize=False,
                                    stop_token_ids=[int(i) for i in request.get("stop", [])])
            out = llm.generate([prompt], params, use_tqdm=False)[0]
            answer({"tokens": [int(t) for t in out.outputs[0].token_ids]})
        else:
            ids = prompt["prompt_token_ids"]
            params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
            out = llm.generate([prompt], params, use_tqdm=False)[0]
            answer({"logprob": [_finite(out.prompt_logprobs[i][ids[i]].logprob) for i in range(1, len(ids))]})


if __name__ == "__main__":  # vLLM spawns its engine core and workers: they re-import __main__
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
