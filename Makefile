# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when it is missing.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False
export TRANSFORMERS_OFFLINE := 1
# Idle OpenMP threads sleep instead of spinning: on 2 shared cores spinning slowed torch and faiss 5-10x.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup demo test lint benchmarks screenshot

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; otherwise `make` finds the stamp and goes straight on.
$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fashion-assistant demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PYTHON) -m pytest -q

# Rewrites docs/app-screenshot.png from the browser test's three-turn dialog on the trained demo model (trained
# first if needed; plain test runs use the tiny test model and leave the picture alone).
screenshot: $(STAMP)
	$(VENV)/bin/fashion-assistant demo --no-serve
	FASHION_ASSISTANT_SCREENSHOT="$$($(PYTHON) -c 'from assistant.cli import demo_model_dir; print(demo_model_dir("demo"))')" \
		$(PYTHON) -m pytest -q tests/test_browser.py -k three_turn

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
