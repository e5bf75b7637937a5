# `make run` and `make test` bootstrap the virtual environment themselves.
VENV    := .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)
FLASK   := $(BIN)/flask --app wsgi

.PHONY: run test bench setup clean translations viewer-bundle ohif

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

test: $(STAMP) ohif
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# OHIF v3's built viewer, served under /ohif/ when OHIF_DIR is set (docs/radiology.md) and opened by the
# browser test: the pinned @ohif/app package from the npm registry over plain HTTPS (no Node), checked
# against its sha512 integrity, its dist/ unpacked into .cache/ohif/<version>/ (git-ignored). Downloads
# 50 MB once; afterwards it only checks the copy is complete.
ohif:
	$(PYTHON) tools/fetch_ohif.py

bench: $(STAMP)
	$(BIN)/python bench/ingest.py --vs-orthanc --concurrency 1,4
	$(BIN)/python bench/query.py --vs-orthanc --studies 100000
	$(BIN)/python bench/retrieve.py --vs-orthanc --memory-gb 2
	$(BIN)/python bench/viewer.py
	$(BIN)/python bench/dicomweb.py

# The study viewer's JavaScript (Cornerstone3D): needs Node 20 and npm, and only here. Installs the exact
# versions of viewer/package-lock.json and writes backoffice/static/vendor/viewer/ with its MANIFEST.json
# (SHA-256 of each file and of the lockfile), which is committed; `make run`, `make test` and CI need no Node.
viewer-bundle:
	cd viewer && npm ci --no-audit --no-fund && node build.mjs

# After changing interface strings: extract them and merge into translations/*/messages.po,
# fill the French msgstr with their msgid (the source language), then fill the English msgstr
# (tests/unit/test_i18n.py fails on any left empty in either catalog).
translations: $(STAMP)
	PYTHONPATH=. $(BIN)/pybabel extract -F babel.cfg -k _l -k lazy_pgettext:1c,2 --no-location --omit-header -w 120 -o $(VENV)/messages.pot .
	$(BIN)/pybabel update -i $(VENV)/messages.pot -d translations -w 120 --no-fuzzy-matching
	PYTHONPATH=. $(BIN)/python -m backoffice.i18n

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
