# The two front-door commands (README): `make demo` and `make test`.
# Both set up a fresh machine: system packages (Festival), .venv, the project.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := festival festlex-cmu festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts chromium

.PHONY: demo test setup system-deps bench lint clean-outputs

setup: system-deps $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# torch first and pinned to the CPU build this machine ships (a newer torch pulls GBs of CUDA).
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 -e '.[test,models,hf,corpora]'
	-$(BIN)/pip install -q -e '.[articulatory]' || echo "optional articulatory extra (VocalTractLab) not installed"
	touch $(STAMP)

demo: setup
	$(BIN)/python train.py

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/probe_sweep.py
	$(BIN)/python bench/cka.py
	$(BIN)/python bench/bootstrap.py
	$(BIN)/python bench/decoder_lens.py
	$(BIN)/python bench/value_zeroing.py
	$(BIN)/python bench/attribution.py
	$(BIN)/python bench/corpora.py
	$(BIN)/python bench/patching.py
	$(BIN)/python bench/sae.py
	$(BIN)/python bench/commands.py --quick

lint: setup
	$(BIN)/pip install -q ruff && $(BIN)/ruff check src tests bench train.py analyze.py
