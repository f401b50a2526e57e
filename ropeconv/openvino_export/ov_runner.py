"""Run by path in the OpenVINO environment (.venv-ov: optimum-intel, openvino, nncf, their transformers and torch):
stdlib, numpy, torch and optimum only — no ropeconv import. One start for several jobs, read from the request JSON
given as argv[1]:

  {"op": "export", "src": DIR, "dst": DIR, "weights": "fp32|fp16|int8|int4", "group_size": N}
      optimum-intel's own exporter (optimum.exporters.openvino.main_export, task text-generation-with-past, stateful,
      the tokenizer converted by openvino-tokenizers), the weights compressed by NNCF through OVWeightQuantizationConfig
      for int8 / int4; writes DST (which must not exist).
  {"op": "run", "model": DIR, "ids": [...], "passes": [{first_position, n_tokens, decode_steps, chunk_tokens,
   lead_tokens}], "out": PREFIX}
      OVModelForCausalLM (INFERENCE_PRECISION_HINT f32) through its stateful KV cache: each pass's prefill (in
      chunks), then its decode steps one token per call, at the pass's positions (position_ids given); the float32
      logits of pass k written to PREFIX-k.npy.

The last line on stdout is JSON: {"versions": {...}, "results": [...]}; "progress: ..." lines go to stderr. Exit 3:
the environment cannot import optimum-intel.
"""

import json
import os
import sys
import time

# run by path, this file's folder comes first on sys.path, and it holds ropeconv's own modules (env.py, output.py):
# a package importing a module of one of those names would find ours
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


def progress(line):
    print(f"progress: {line}", file=sys.stderr, flush=True)


def versions():
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("openvino", "optimum-intel", "optimum", "nncf", "transformers", "torch"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def export(job):
    from optimum.exporters.openvino import main_export  # type: ignore[import-not-found]
    from optimum.intel import OVConfig, OVWeightQuantizationConfig  # type: ignore[import-not-found]

    weights = job["weights"]
    if weights == "int8":
        ov_config = OVConfig(quantization_config=OVWeightQuantizationConfig(bits=8))
    elif weights == "int4":
        ov_config = OVConfig(quantization_config=OVWeightQuantizationConfig(
            bits=4, sym=True, group_size=int(job["group_size"]), ratio=1.0))
    else:
        ov_config = OVConfig(dtype=weights)
    started = time.monotonic()
    main_export(job["src"], job["dst"], task="text-generation-with-past", ov_config=ov_config, stateful=True,
                convert_tokenizer=True, local_files_only=True, trust_remote_code=False)
    progress(f"exported {job['dst']} ({weights}) in {time.monotonic() - started:.1f} s")
    return {"dst": job["dst"]}


def spans(p):
    prefill = p["n_tokens"] - p.get("decode_steps", 0)
    step = p.get("chunk_tokens", 0) or prefill
    first = min(prefill, max(step, p.get("lead_tokens", 0)))
    out = [(0, first)] + [(a, min(a + step, prefill)) for a in range(first, prefill, step)]
    return out + [(i, i + 1) for i in range(prefill, p["n_tokens"])]


def run(job):
    import numpy as np
    import torch
    from optimum.intel import OVModelForCausalLM

    started = time.monotonic()
    model = OVModelForCausalLM.from_pretrained(job["model"], ov_config={"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"},
                                               compile=True, use_cache=True, local_files_only=True)
    if not model.stateful:
        raise SystemExit(f"{job['model']}: not a stateful OpenVINO model")
    files = []
    for k, p in enumerate(job["passes"]):
        ids = job["ids"][: p["n_tokens"]]
        first = int(p.get("first_position", 0))
        rows, past = [], None
        for a, b in spans(p):
            input_ids = torch.tensor([ids[a:b]], dtype=torch.long)
            position_ids = torch.arange(first + a, first + b, dtype=torch.long).unsqueeze(0)
            attention_mask = torch.ones((1, b), dtype=torch.long)
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        past_key_values=past)
            past = out.past_key_values
            rows.append(out.logits[0].to(torch.float32).numpy())
        path = f"{job['out']}-{k}.npy"
        np.save(path, np.concatenate(rows, axis=0))
        files.append(path)
    progress(f"ran {job['model']} ({len(job['passes'])} pass(es)) in {time.monotonic() - started:.1f} s")
    return {"files": files}


def main():
    try:
        import optimum.intel  # type: ignore[import-not-found]  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure to import is a broken environment
        print(f"cannot import optimum.intel: {exc}", file=sys.stderr)
        sys.exit(3)
    with open(sys.argv[1]) as f:
        request = json.load(f)
    results = []
    for job in request["jobs"]:
        results.append(export(job) if job["op"] == "export" else run(job))
    print(json.dumps({"versions": versions(), "results": results}))


if __name__ == "__main__":
    main()
