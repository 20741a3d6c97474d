# Two commands for a fresh clone (Python 3.11 and pip are all you need):
#   make lab    set everything up, then open the course in JupyterLab
#   make test   set everything up, then run the whole test suite (package tests and notebooks)
# On an NVIDIA GPU machine add GPU=1 to keep the CUDA torch build pip picks (see README).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed$(if $(GPU),-gpu,-cpu)
CONSTRAINTS := $(if $(GPU),,-c constraints-cpu.txt)
PYTEST_WORKERS ?= 2
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root)  # containers often run as root

.PHONY: setup lab test bench-cpu clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints-cpu.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed*
	touch $(STAMP)

lab: setup
	$(BIN)/jupyter lab $(LAB_FLAGS) notebooks/00_welcome.ipynb

test: setup
	bash scripts/ensure_chromium.sh
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope --nbval-lax tests notebooks

bench-cpu: setup
	$(BIN)/python -m m3lite.bench cpu

clean:
	rm -rf $(VENV) build *.egg-info
