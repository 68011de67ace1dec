# Two commands on a fresh machine: `make train` and `make test`.
# Both create the virtual environment .venv on first use and install the project into it.
# TORCH_SPEC defaults to the CPU build; on a GPU machine install a CUDA build of torch into
# .venv first (see README), or run e.g. `make train TORCH_SPEC=torch==2.13.0+cu128 ...`.

PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/maml_lil_5shot.yaml
OPTS ?=

.PHONY: install train test lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) tools/train_net.py --config-file $(CONFIG) --resume $(OPTS)

test: install
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf output .pytest_cache
