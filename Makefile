# The README's commands. Each installs what it needs first (.ci/setup).
#   make book    -- train the default profile's runs (in parallel, with a progress bar), then execute
#                   every chapter and render _build/html
#   make test    -- type check, unit tests, every chapter under nbval (smoke), book build with -W
#   make thesis  -- export the figures (PDF, SVG), tables (LaTeX, CSV) and claims that the last
#                   `make book` kept to thesis/ ($REGVIT_PROFILE picks the profile; default cpu)
#   make publish -- `make book`, then ready _build/html for static hosting (see below)
SHELL := /bin/bash
PY = $$(cat .regvit-python)
BIN = $$(dirname $$(cat .regvit-python))

.PHONY: setup book test clean thesis

setup:
	@bash .ci/setup

book: setup
	$(PY) -m regvit_lib.prepare
	PATH="$(BIN):$$PATH" "$(BIN)/jupyter-book" build --all .

thesis: setup
	$(PY) -m regvit_lib.export --out thesis/

# make publish -- `make book`, once the chapters' Colab install cells match _config.yml's
#                 repository.url (python -m regvit_lib.publish sync rewrites them), then ready
#                 _build/html for static hosting (.nojekyll: GitHub Pages then serves _static/)
.PHONY: publish publish-check
publish-check: setup
	@$(PY) -m regvit_lib.publish check

publish: publish-check book
	@touch _build/html/.nojekyll
	@echo "publish: the site is in $(CURDIR)/_build/html ($$(du -sh _build/html | cut -f1)); upload that folder as is"

test: setup
	$(PY) -m mypy regvit_lib
	PATH="$(BIN):$$PATH" $(PY) -m pytest tests
	PATH="$(BIN):$$PATH" REGVIT_PROFILE=smoke REGVIT_DATA=scenes $(PY) -m pytest --nbval chapters
	PATH="$(BIN):$$PATH" REGVIT_PROFILE=smoke REGVIT_DATA=scenes "$(BIN)/jupyter-book" build --all --warningiserror --keep-going .

clean:
	rm -rf _build
