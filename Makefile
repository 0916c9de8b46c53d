# Finetune Workbook. `make run` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
KERNEL := finetune-workbook
PYTEST_ARGS ?=

.PHONY: setup run test lab lock samples lint clean help

help:
	@echo "make run    - set up if needed, then execute every notebook headless into runs/"
	@echo "make test   - set up if needed, then run the whole test suite"
	@echo "make lab    - JupyterLab with the workbook's kernel"
	@echo "make setup  - virtual environment + pinned requirements + helpers + Jupyter kernel"

# The virtual environment is rebuilt when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --user --name $(KERNEL) --display-name "Python (finetune-workbook)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/workbook run

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

samples: setup
	$(VENV)/bin/workbook samples

lock: setup
	{ echo "# The tested set: exact pins (Python 3.11, CPU build of torch). Regenerate with 'make lock'."; \
	  $(PY) -m pip freeze --exclude-editable | sed 's/+cpu//' | grep -v '^finetune-workbook'; } > requirements.txt.new
	mv requirements.txt.new requirements.txt

clean:
	rm -rf runs .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
