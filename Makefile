# Every target sets itself up: a virtualenv in .venv, torch first (the CPU wheel where one is available, so pip
# does not pull CUDA packages), then the project with its extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,alfworld,quant,tracking
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell echo "$(TORCH_SPEC) $(EXTRAS)" | cksum | cut -d' ' -f1)

.PHONY: setup demo test test-slow bench lint clean reproduce-quick setup-torchvision test-torchvision

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/gflowvlm demo --out demo_out

# The quick grid of the reproduction (NumberLine + Blackjack; sft, ppo, subtb-off; one seed). Resumable: rerun it.
# The two envs run side by side, one thread each: the tiny VLM's token-by-token generation is faster on one thread
# than on two (measured: 27 s vs 44 s for the same 32 greedy episodes, identical results), so one process per core
# finishes both envs in about the time of one. Each env's log is $(QUICK_OUT)/<env>.log.
QUICK_OUT ?= reproduce_out/quick
QUICK_THREADS ?= 1
reproduce-quick: setup
	mkdir -p $(QUICK_OUT)
	GFLOWVLM_NUM_THREADS=$(QUICK_THREADS) $(VENV)/bin/gflowvlm reproduce --recipe configs/reproduce/numberline.yaml \
		--out $(QUICK_OUT)/numberline --quick > $(QUICK_OUT)/numberline.log 2>&1 & nl=$$!; \
	GFLOWVLM_NUM_THREADS=$(QUICK_THREADS) $(VENV)/bin/gflowvlm reproduce --recipe configs/reproduce/blackjack.yaml \
		--out $(QUICK_OUT)/blackjack --quick > $(QUICK_OUT)/blackjack.log 2>&1 & bj=$$!; \
	wait $$nl; a=$$?; wait $$bj; b=$$?; tail -n 40 $(QUICK_OUT)/numberline.log $(QUICK_OUT)/blackjack.log; \
	test $$a -eq 0 -a $$b -eq 0

# Scratch space for the tests beside the checkout, not in /tmp, which may be a small tmpfs (pytest clears it first).
PYTEST_TMP := $(CURDIR)/.pytest-tmp

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --basetemp=$(PYTEST_TMP)

# The model families whose library processors need torchvision (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision load their
# video processor), tested with the real library processors in a second venv: PyPI's torchvision does not import
# beside the 2.13.0 CPU wheel, while torch 2.14.1 + torchvision 0.29.1 (a CUDA build that runs on the CPU) do.
# Measured here: 145 s to install torch + torchvision, 71 s for the project, 5.8 GB; the tests take about 45 s.
TV_VENV ?= .venv-tv
TV_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TV_PY := $(TV_VENV)/bin/python
TV_STAMP := $(TV_VENV)/.installed-$(shell echo "$(TV_TORCH_SPEC)" | cksum | cut -d' ' -f1)

setup-torchvision: $(TV_STAMP)

$(TV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(TV_VENV)
	$(TV_PY) -m pip install -q --upgrade pip
	$(TV_PY) -m pip install -q $(TV_TORCH_SPEC)
	$(TV_PY) -m pip install -q -e ".[dev,quant]"
	touch $(TV_STAMP)

test-torchvision: setup-torchvision
	$(TV_PY) -c "import torchvision"
	$(TV_PY) -m pytest -q --basetemp=$(PYTEST_TMP) tests/model/test_policy_families.py tests/model/test_policy_qwen2_vl.py tests/model/test_model_tiny_vlm.py

lint: setup
	$(VENV)/bin/ruff check gflowvlm tests scripts

test-slow: setup
	$(PY) -m pytest -q -m slow --basetemp=$(PYTEST_TMP)

bench: setup
	$(PY) scripts/bench_envs.py
	$(PY) scripts/bench_objectives.py
	$(PY) scripts/bench_policy.py
	$(PY) scripts/bench_training.py
	$(PY) scripts/bench_alfworld.py
	$(PY) scripts/bench_contention.py

clean:
	rm -rf $(VENV) $(TV_VENV) demo_out reproduce_out .pytest_cache
