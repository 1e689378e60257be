# Two entry points for a fresh machine: `make serve` and `make test`.
# Each bootstraps the virtualenv in $(VENV) when it is missing or stale.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv serve test lint test-slow clean fuzz

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so pip takes the CPU/CUDA wheels from the local cache
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[models,dev,load]'
	touch $(STAMP)

serve: venv
	$(VENV)/bin/shuffleguard serve

lint: venv
	$(VENV)/bin/ruff check service tests load_tests
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

test-slow: venv
	$(VENV)/bin/pytest -m slow

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Coverage-guided fuzzing (atheris) of every parser that sees untrusted bytes:
# FUZZ_SECONDS per target; a crash stops the run and names the input file.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= npy video upload handler wire

fuzz: venv
	for t in $(FUZZ_TARGETS); do \
		$(PY) -m tests.fuzz.run $$t -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done
