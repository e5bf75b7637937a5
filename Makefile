# `make run` and `make test` bootstrap the virtual environment themselves.
VENV    := .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)
FLASK   := $(BIN)/flask --app wsgi

.PHONY: run test bench setup clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(FLASK) db upgrade
	$(FLASK) users bootstrap
	$(FLASK) serve

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/ingest.py --vs-orthanc
	$(BIN)/python bench/viewer.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
