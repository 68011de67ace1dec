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

# The wheels a GPU machine's image lacks (docs/performance.md, "The GPU session"): pure-Python
# packages of this project's dependencies, for its Python 3.12, in .whl/ (ignored by git).
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 pooch==1.9.0 platformdirs==4.14.9 submitit==1.5.4 higher==0.2.1

.PHONY: install train test lint clean gpu-wheels

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
# where the project's datasets/ folder would shadow HuggingFace's datasets. Two workers (the
# machines' two cores; pytest-xdist), each test file on one of them, so a file's fixtures are
# built once: most tests run one thread and wait on subprocesses.
PYTEST_WORKERS ?= 2
test: install
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile

lint: install
	$(PY) -m ruff check .

gpu-wheels:
	mkdir -p .whl
	$(PYTHON_SYS) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	$(PYTHON_SYS) -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
	grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude

clean:
	rm -rf output .pytest_cache
