# The two commands a new user needs: `make run` and `make test`. Both set everything up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint web-model clean

$(STAMP): pyproject.toml scripts/setup.sh audiosocket/_wire.c
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/audiosocket serve

test: $(STAMP)
	bash scripts/test.sh

# The browser Whisper for the upload page (optional; `make test` builds it too).
web-model: $(STAMP)
	bash scripts/web-model.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy audiosocket sessions helpers web models

clean:
	rm -rf $(VENV) build *.egg-info
