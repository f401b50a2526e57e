"""Run saved transformers models in vLLM (its offline LLM engine, in another Python environment) and write the
prompt's log-probabilities.

vLLM pins its own torch, transformers and numpy, so it lives in .venv-vllm (`make vllm`) and this file is run there
by path: it imports the standard library and vllm only (never ropeconv). The comparison with the reference stays in
ropeconv (ropeconv.parity.vllm); this only loads and runs.

    python vllm_runner.py REQUEST.json

REQUEST: {"jobs": [{"model": DIR, "ids": [int, ...], "max_model_len": N, "out": FILE.json}], "device": "cpu" or
"cuda"}. For each job, one LLM(model=DIR, dtype="float32" on a CPU else "auto", max_model_len=N,
enforce_eager=True), one generate of the ids as a TokensPrompt with SamplingParams(max_tokens=1, temperature=0,
prompt_logprobs=1); FILE.json gets {"logprob": [log p(ids[i] | ids[:i]) for i ≥ 1], "top1": [the top-ranked token
id at each of those rows], "top1_logprob": [its log-probability], "applied": what the model's first rotary module
holds, "max_model_len": what vLLM took}. The models run one after the other in this one process (vLLM's start-up
takes most of a minute on 2 cores: a caller batches its models into one call). stdout: one JSON line with the
versions. stderr: a "progress: …" line per model. Exit 3: the environment cannot import vllm.
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
import time

# run by path, this file's folder comes first on sys.path, and it holds ropeconv/parity/vllm.py: `import vllm` would
# find that file, not vLLM (the engine's spawned processes inherit this sys.path)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

# the rotary module's attributes that say what vLLM applied (by class: YaRN, linear, llama3, LongRoPE, dynamic)
ROTARY_ATTRIBUTES = ("scaling_factor", "mscale", "max_position_embeddings", "original_max_position_embeddings",
                     "beta_fast", "beta_slow", "use_long_rope", "short_mscale", "long_mscale", "base", "head_size",
                     "rotary_dim", "low_freq_factor", "high_freq_factor", "orig_max_position", "scaling_factors")

# llm.apply_model pickles the function to the engine's worker, which must import it by module name: it is written
# to a folder of its own (this file's folder also holds ropeconv/parity/vllm.py, which would shadow vllm itself)
HELPER = f'''
ATTRIBUTES = {ROTARY_ATTRIBUTES!r}


def rotary_info(model):
    layers = getattr(getattr(model, "model", model), "layers", None)
    rotary = getattr(layers[0].self_attn, "rotary_emb", None) if layers is not None else None
    if rotary is None:
        return {{"class": None}}
    out = {{"class": type(rotary).__name__}}
    for name in ATTRIBUTES:
        value = getattr(rotary, name, None)
        if isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(v, (int, float)) for v in value):
            out[name] = list(value)
    return out
'''


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # NaN / inf are written as null (JSON has neither)


def run_job(job: dict, device: str, rotary_info) -> dict:
    from vllm import LLM, SamplingParams  # type: ignore[import-not-found]  # in .venv-vllm only
    from vllm.inputs import TokensPrompt  # type: ignore[import-not-found]

    ids = [int(i) for i in job["ids"]]
    llm = LLM(model=job["model"], dtype="float32" if device == "cpu" else "auto", max_model_len=job["max_model_len"],
              enforce_eager=True, seed=0, skip_tokenizer_init=True)  # token ids in, log-probabilities out
    try:
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
        out = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
        logprob, top1, top1_logprob = [], [], []
        for i in range(1, len(ids)):
            row = out.prompt_logprobs[i]  # token id → Logprob(logprob, rank): the actual token and the rank-1 one
            logprob.append(_finite(row[ids[i]].logprob))
            best = min(row.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)
            top1.append(int(best[0]))
            top1_logprob.append(_finite(best[1].logprob))
        try:
            applied = llm.apply_model(rotary_info)[0]
        except Exception as exc:  # the report then says it could not be read; the numbers still stand
            applied = {"class": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
        return {"logprob": logprob, "top1": top1, "top1_logprob": top1_logprob, "applied": applied,
                "max_model_len": llm.llm_engine.model_config.max_model_len}
    finally:
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()  # the engine core process of this model ends before the next model starts
        del llm
        gc.collect()


def main(request_path: str) -> None:
    request = json.loads(open(request_path, encoding="utf-8").read())
    # the helper lies beside the request, in the caller's temporary folder, which goes with it
    helper_dir = os.path.dirname(os.path.abspath(request_path))
    with open(os.path.join(helper_dir, "ropeconv_vllm_helper.py"), "w", encoding="utf-8") as fh:
        fh.write(HELPER)
    sys.path.insert(0, helper_dir)
    # apply_model sends the function to vLLM's own worker process (pickled, a local pipe: nothing else reads it)
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: the default takes a share of RAM per engine
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (helper_dir, os.environ.get("PYTHONPATH")) if p)
    try:
        import vllm
        from ropeconv_vllm_helper import rotary_info  # type: ignore[import-not-found]  # written above
    except Exception as exc:  # any import failure means the environment is unusable, not the model
        print(f"cannot import vllm: {exc}", file=sys.stderr)
        sys.exit(3)
    jobs = request["jobs"]
    for j, job in enumerate(jobs):
        start = time.monotonic()
        result = run_job(job, request.get("device", "cpu"), rotary_info)
        with open(job["out"], "w", encoding="utf-8") as fh:
            json.dump(result, fh)
        print(f"progress: model {j + 1}/{len(jobs)} ({len(job['ids'])} tokens) done in "
              f"{time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
    from importlib.metadata import version

    print(json.dumps({"vllm": vllm.__version__, "transformers": version("transformers"), "torch": version("torch")}))


if __name__ == "__main__":  # vLLM spawns its engine core and workers: they re-import __main__
    main(sys.argv[1])
