# Two commands on a fresh machine: `make train` and `make test`.
# Both create the virtual environment .venv on first use and install the project into it.
# TORCH_SPEC defaults to the CPU build; on a GPU machine install a CUDA build of torch into
# .venv first (see README), or run e.g. `make train TORCH_SPEC=torch==2.13.0+cu128 ...`.

PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/maml_lil_5shot.yaml
# the budget of the built-in study (configs/tables/builtin.yaml, docs/results_builtin.md), so that
# `make train` is that study's MAML + LIL 5-shot run for seed 0; OPTS adds overrides after it
BUDGET ?= model.backbone.hidden=32 solver.max_iter=500
OPTS ?=

.PHONY: install train test lint clean

# `pip install -e` (setuptools' default mode) writes a static .pth line to src/, which holds only
# lil_meta: static checkers and editors resolve it, and no other folder becomes importable.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) tools/train_net.py --config-file $(CONFIG) --resume $(BUDGET) $(OPTS)

# $(VENV)/bin/pytest, not `python -m pytest`: -m would put the repository root first on sys.path,
# where the project's datasets/ folder would shadow HuggingFace's datasets.
test: install
	$(VENV)/bin/pytest

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf output .pytest_cache
