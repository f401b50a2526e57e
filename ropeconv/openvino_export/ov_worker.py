"""One OpenVINO IR folder held open for `ropeconv eval --runtime openvino`: requests in on stdin, answers out on stdout,
one JSON line each, until stdin closes.

Run by path in the OpenVINO environment (.venv-ov), as ov_runner.py is: stdlib, numpy, torch and optimum only — no
ropeconv import. Tokenizing, scoring and caching stay in ropeconv (ropeconv.eval.openvino_runtime); this runs token ids.

    python ov_worker.py MODEL_DIR

The model: OVModelForCausalLM (INFERENCE_PRECISION_HINT f32, KV_CACHE_PRECISION f32), compiled once at the start,
through its stateful KV cache with position_ids given (as ov_runner.py's parity runs).
Requests: {"op": "generate", "ids": [...], "max_new_tokens": N, "stop": [eos ids], "chunk": C} → {"tokens": [greedy
ids]} (the prompt prefilled in chunks of C tokens, 0: one call; then one token per call, stopping after a stop id);
{"op": "logprobs", "ids": [...], "chunk": C} → {"logprob": [log p(ids[i] | ids[:i]) for i ≥ 1]} (float64 log-softmax
of the float32 logits). Each answer is one line starting with MARK (anything else on stdout is not an answer); the
first is {"ready": versions}; a failed request answers {"error": "..."}. Exit 3: the environment cannot import
optimum-intel.
"""

import json
import math
import os
import sys
from collections import deque

MARK = "ropeconv-ov-answer "

# run by path, this file's folder comes first on sys.path, and it holds ropeconv's own modules (env.py, output.py):
# a package importing a module of one of those names would find ours
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


def answer(record):
    sys.stdout.write(MARK + json.dumps(record) + "\n")
    sys.stdout.flush()


def versions():
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("openvino", "optimum-intel", "transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


class Session:
    def __init__(self, model):
        self.model = model

    def forward(self, ids, chunk):
        """Each span's logits (float32 numpy [n, vocab]) of ids prefilled from position 0 through the KV cache."""
        import torch

        step = chunk or len(ids)
        past = None
        for a in range(0, len(ids), step):
            b = min(a + step, len(ids))
            out = self.model(input_ids=torch.tensor([ids[a:b]], dtype=torch.long),
                             attention_mask=torch.ones((1, b), dtype=torch.long),
                             position_ids=torch.arange(a, b, dtype=torch.long).unsqueeze(0), past_key_values=past)
            past = out.past_key_values
            yield a, out.logits[0].to(torch.float32).numpy(), past

    def generate(self, ids, max_new_tokens, stop, chunk):
        import numpy as np
        import torch

        _, logits, past = deque(self.forward(ids, chunk), maxlen=1)[0]  # the last span's
        new = []
        for n in range(max_new_tokens):
            token = int(np.argmax(logits[-1]))
            new.append(token)
            if token in stop or n == max_new_tokens - 1:
                break
            position = len(ids) + n
            out = self.model(input_ids=torch.tensor([[token]], dtype=torch.long),
                             attention_mask=torch.ones((1, position + 1), dtype=torch.long),
                             position_ids=torch.tensor([[position]], dtype=torch.long), past_key_values=past)
            past = out.past_key_values
            logits = out.logits[0].to(torch.float32).numpy()
        return new

    def logprobs(self, ids, chunk):
        import numpy as np

        found = []
        for a, logits, _ in self.forward(ids, chunk):
            rows = logits.astype(np.float64)[: max(0, len(ids) - 1 - a)]  # the last row predicts nothing asked
            if not len(rows):
                continue
            top = rows.max(axis=-1, keepdims=True)
            norm = top[:, 0] + np.log(np.exp(rows - top).sum(axis=-1))
            target = np.asarray(ids[a + 1: a + 1 + len(rows)])
            found += [float(v) if math.isfinite(v) else None
                      for v in rows[np.arange(len(rows)), target] - norm]
        return found


def main(model_dir):
    try:
        from optimum.intel import OVModelForCausalLM  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001 - any failure to import is a broken environment
        print(f"cannot import optimum.intel: {exc}", file=sys.stderr)
        sys.exit(3)
    model = OVModelForCausalLM.from_pretrained(
        model_dir, ov_config={"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}, compile=True,
        use_cache=True, local_files_only=True)
    if not model.stateful:
        print(f"{model_dir}: not a stateful OpenVINO model", file=sys.stderr)
        sys.exit(2)
    session = Session(model)
    answer({"ready": versions()})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        ids = [int(i) for i in request["ids"]]
        chunk = int(request.get("chunk", 0))
        try:
            if request["op"] == "generate":
                answer({"tokens": session.generate(ids, int(request["max_new_tokens"]),
                                                   {int(i) for i in request.get("stop", [])}, chunk)})
            else:
                answer({"logprob": session.logprobs(ids, chunk)})
        except Exception as exc:  # noqa: BLE001 - one request's failure is answered; the model stays open
            answer({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"})


if __name__ == "__main__":
    main(sys.argv[1])
