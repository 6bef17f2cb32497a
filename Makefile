# tenantserve: the two commands a new user needs are `make demo` and `make test`.
# Both set up .venv first (a no-op once done: the stamp is keyed on pyproject.toml and the setup script).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tenantserve-setup

.PHONY: setup demo test test-unit lint clean-venv model

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_env.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup_env.sh
	touch $(STAMP)

demo: setup
	$(PY) -m tenantserve demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -m "not engine" $(PYTEST_ARGS)

model: setup  ## retrain the embedded demo model (a few minutes; the result is committed)
	$(PY) scripts/build_demo_model.py --out models/embedded

clean-venv:
	rm -rf $(VENV)
