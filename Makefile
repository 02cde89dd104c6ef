# `make book` and `make test` do all the set-up on a fresh machine: they create .venv if it is
# missing and install the project (torch + matching torchvision from the registry) into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	$(BIN)/lus book --profile quick

test: $(STAMP)
	$(BIN)/python -m pytest -ra

bench: $(STAMP)
	$(BIN)/lus bench --model unet_mobilenet_v2 --size 128 --batch 8 --steps 20

clean:
	rm -rf book/_build book/chapters/*.ipynb
