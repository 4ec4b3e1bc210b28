# The two commands of the README. Both install what they need first (.ci/setup).
#   make book  -- train the default profile's runs (in parallel, with a progress bar), then execute
#                 every chapter and render _build/html
#   make test  -- type check, unit tests, every chapter under nbval (smoke), book build with -W
SHELL := /bin/bash
PY = $$(cat .regvit-python)
BIN = $$(dirname $$(cat .regvit-python))

.PHONY: setup book test clean

setup:
	@bash .ci/setup

book: setup
	$(PY) -m regvit_lib.prepare
	PATH="$(BIN):$$PATH" "$(BIN)/jupyter-book" build --all .

test: setup
	$(PY) -m mypy regvit_lib
	PATH="$(BIN):$$PATH" $(PY) -m pytest tests
	PATH="$(BIN):$$PATH" REGVIT_PROFILE=smoke $(PY) -m pytest --nbval chapters
	PATH="$(BIN):$$PATH" REGVIT_PROFILE=smoke "$(BIN)/jupyter-book" build --all --warningiserror --keep-going .

clean:
	rm -rf _build
