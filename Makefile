# `make repro` and `make test` do all the set-up on a fresh machine (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
comma := ,
# GPU=1 installs TensorFlow with CUDA instead of the CPU build.
TENSORFLOW := $(if $(filter 1,$(GPU)),gpu,cpu)
PORT ?= 3000
DOCS_PORT ?= 8000
UI_PORT ?= 5000
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: help install lock docs-assets scale data postgres browser npm repro exp test test-fast lint format ui serve build bench docs clean

help:
	@echo "make repro   install, fetch Fashion-MNIST where possible, run the DVC pipeline"
	@echo "make exp     the experiments: chosen variant, test and validation accuracy (ALL=1: every column)"
	@echo "make test    install and run every test (slow ones included)"
	@echo "make serve   serve the registered champion with BentoML on 127.0.0.1:$(PORT)"
	@echo "make ui      MLflow UI on 127.0.0.1:$(UI_PORT)"
	@echo "make bench   run the benchmarks in bench/"
	@echo "make docs    the documentation site on 127.0.0.1:$(DOCS_PORT)"
	@echo "make lock    resolve pyproject.toml again into requirements/, the locked versions"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Every install comes from the lock files in requirements/: exact versions and the sha256 of each
# file, so a fresh clone gets the versions that produced dvc.lock whatever was released since, and
# nothing else (`make lock` updates them from pyproject.toml; docs/development.md). They are
# layers: the TensorFlow build's (cpu.txt, or gpu.txt with GPU=1), all that `make repro` needs;
# dev.txt on top for the tests, lint and docs; scale.txt (Ray) for `make test`. Each layer's stamp
# depends on its file, so a relock reinstalls it, and the layers agree on every package they
# share, so one never moves another's. The project goes in last, --no-deps and built with the
# locked setuptools (--no-build-isolation). The install stops at once when pyproject.toml's
# requirements changed after the last `make lock`.
# uv (UV_VERSION, installed into the venv by pip) installs and byte-compiles on every core. Where
# uv cannot be had or fails (an index only pip's config knows, say), pip installs instead, hashes
# required too; INSTALLER=pip skips uv. pip byte-compiles on one core, so it runs with --no-compile
# and compileall compiles on all of them (0.55-0.85x the time). Compiling at install matters: every
# later process would compile tensorflow & co. in memory where PYTHONDONTWRITEBYTECODE is set.
# Like pip, compileall goes on past a file that does not compile (some packages ship such files).
INSTALLER ?= uv
UV_VERSION := 0.13.9
LOCKS := requirements
PURELIB = "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"

# $(call locked_install,LOCK FILE): install exactly its pins, hashes required, with uv or pip.
define locked_install
if [ "$(INSTALLER)" = uv ] && [ -x $(BIN)/uv ] && $(BIN)/uv pip install --python $(BIN)/python \
		--quiet --compile-bytecode --require-hashes -r $(1); then \
		echo "Installed $(1) with uv"; \
	else \
		[ "$(INSTALLER)" = uv ] && echo "uv could not install $(1): installing with pip"; \
		$(BIN)/python -m pip install --quiet --no-compile --require-hashes -r $(1) \
		&& { $(BIN)/python -m compileall -q -j 0 $(PURELIB) >/dev/null || true; } \
		&& echo "Installed $(1) with pip"; \
	fi
endef

TRAIN_STAMP := $(VENV)/.installed-$(TENSORFLOW)
$(TRAIN_STAMP): $(LOCKS)/$(TENSORFLOW).txt pyproject.toml | $(BIN)/python
	@$(BIN)/python -m pipeline.environment check
	@[ "$(INSTALLER)" != uv ] || $(BIN)/python -m pip install --quiet uv==$(UV_VERSION) \
		|| echo "pip could not install uv"
	@$(call locked_install,$(LOCKS)/$(TENSORFLOW).txt)
	@if [ "$(INSTALLER)" = uv ] && [ -x $(BIN)/uv ]; then \
		$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps --no-build-isolation -e .; \
	else $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .; fi
	rm -f $(VENV)/.installed-cpu $(VENV)/.installed-gpu
	touch $@

DEV_STAMP := $(VENV)/.installed-dev
$(DEV_STAMP): $(LOCKS)/dev.txt | $(TRAIN_STAMP)
	@$(call locked_install,$<)
	touch $@

# Ray (the `scale` layer) for `python -m pipeline.sweep` and its tests: `make test` installs it on
# top of the rest, `make repro` never does.
SCALE_STAMP := $(VENV)/.installed-scale
$(SCALE_STAMP): $(LOCKS)/scale.txt | $(DEV_STAMP)
	@$(call locked_install,$<)
	touch $@

scale: $(SCALE_STAMP)

# `make lock` resolves pyproject.toml again into requirements/ (pipeline/environment.py) and
# moves only the pins a change to pyproject.toml needs moved; UPGRADE=1 moves every pin to the
# newest release pyproject.toml allows. It needs the package index; installs need only the files.
UPGRADE ?= 0
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/python -m pipeline.environment lock $(if $(filter 1,$(UPGRADE)),--upgrade)

# `dvc plots show` pages with Vega inline (npm pack), so they render offline; .dvc/config names it.
PLOTS_TEMPLATE := .dvc/plots/offline.html
$(PLOTS_TEMPLATE): | $(TRAIN_STAMP)
	$(BIN)/python -m pipeline.stages.offline_plots --out $@

install: $(TRAIN_STAMP) $(DEV_STAMP) $(PLOTS_TEMPLATE)

# The docs site draws the README's flow chart with Mermaid. mkdocs-material fetches Mermaid 11 from
# unpkg unless the page has loaded it already; this copy (npm pack, git-ignored) makes the site
# render offline. Without npm the site still builds, and the chart needs the CDN.
MERMAID_VERSION := 11.17.2
MERMAID := docs/javascripts/mermaid.min.js
$(MERMAID):
	@mkdir -p $(@D); work=$$(mktemp -d); \
	if command -v npm >/dev/null 2>&1 \
		&& (cd $$work && npm pack --silent mermaid@$(MERMAID_VERSION) >/dev/null 2>&1) \
		&& tar -xzf $$work/mermaid-$(MERMAID_VERSION).tgz -C $$work package/dist/mermaid.min.js; then \
		mv $$work/package/dist/mermaid.min.js $@ && echo "$@: Mermaid $(MERMAID_VERSION) for the docs site"; \
	else echo "npm could not fetch Mermaid: the docs site's flow chart will load it from a CDN"; fi; \
	rm -rf $$work

docs-assets: $(MERMAID)

# $(call apt_install,PACKAGES,WHAT HAPPENS WITHOUT THEM): install Debian packages when we may
# (root or passwordless sudo); otherwise say what that means.
define apt_install
if ! command -v apt-get >/dev/null 2>&1; then \
		echo "No apt-get here: $(2)"; \
	else \
		if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
		if [ "$$SUDO" = none ]; then \
			echo "Not root: skipping 'apt-get install $(1)'; $(2)"; \
		else \
			echo "Installing Debian packages $(1)"; \
			$$SUDO apt-get install -y -qq $(1) >/dev/null 2>&1 \
			|| { $$SUDO apt-get update -qq >/dev/null 2>&1 && $$SUDO apt-get install -y -qq $(1) >/dev/null 2>&1; } \
			|| echo "Could not install $(1); $(2)"; \
		fi; \
	fi
endef

# Debian ships the full Fashion-MNIST as a package; install it when we may. Otherwise the download
# stage falls back to the canonical mirrors.
data:
	@if [ -d $(FASHION_DIR) ]; then \
		echo "Fashion-MNIST found in $(FASHION_DIR)"; \
	else $(call apt_install,dataset-fashion-mnist,the download stage will try the mirrors); fi

# The team tests (tests/team) start a private PostgreSQL cluster from Debian's `postgresql`
# binaries. Without them those tests skip and say why.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "PostgreSQL found: $$(ls -d /usr/lib/postgresql/*/bin | tail -1)"; \
	else $(call apt_install,postgresql,the team tests (PostgreSQL-backed MLflow) will be skipped); fi

# The page test (/ui) drives a real headless Chromium through chromedriver.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "Chromium and chromedriver found"; \
	else $(call apt_install,chromium chromium-driver,the browser tests (/ui$(comma) dvc plots$(comma) MLflow UI) will be skipped); fi

# npm fetches Vega for the offline `dvc plots` page (the template `make install` writes, and the
# test that renders it). It comes first in `make test`, so install's template can use it.
npm:
	@if command -v npm >/dev/null 2>&1; then \
		echo "npm found"; \
	else $(call apt_install,npm,the offline dvc plots test will be skipped and dvc plots pages load Vega from a CDN); fi

# `dvc repro` needs the training layer only: no test, lint or docs tools.
repro: $(TRAIN_STAMP) $(PLOTS_TEMPLATE) data
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# `dvc exp show` has about 260 columns (every metric, every key of params.yaml, every dependency's
# hash) and, in a terminal under about 300 columns or with --no-pager, collapses to `… … …`; DVC
# has no setting for the columns it shows. `make exp` keeps the leading ones, which fit in 120
# columns: each experiment, when it was made, the chosen variant and its test and validation
# accuracy (the workspace row: what `make repro` just measured). ALL=1 prints every column as a
# Markdown table instead (`make exp ALL=1 | less -S` scrolls sideways). EXP_ARGS passes options
# to `dvc exp show`, e.g. EXP_ARGS=-A for the experiments of every commit.
EXP_COLUMNS := ^(Experiment|Created|chosen\.(variant|test_accuracy|val_accuracy))$$
ALL ?= 0
EXP_ARGS ?=
exp:
	@PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc exp show \
		$(if $(filter 1,$(ALL)),--md,--no-pager --drop '.*' --keep '$(EXP_COLUMNS)') $(EXP_ARGS)

# PYTEST_ARGS passes options to pytest (CI: --durations=15, the slowest tests).
PYTEST_ARGS ?=
# The tests run side by side in TEST_JOBS pytest-xdist workers (one per core, at most 4; 1: one
# process, as plain pytest), a test file to a worker at a time and the team tests on one worker
# (tests/conftest.py): half of a 2-core machine idled while one test waited on a server.
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST := PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest \
	$(if $(filter-out 1,$(TEST_JOBS)),-n $(TEST_JOBS))
test: npm install docs-assets scale data postgres browser
	$(PYTEST) $(PYTEST_ARGS)

test-fast: install
	$(PYTEST) -m "not slow"

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# MLflow 3's UI opens on its GenAI views unless told otherwise: the link picks "Model training".
ui: install
	@echo "MLflow UI: http://127.0.0.1:$(UI_PORT)/#/experiments?workflowType=machine_learning"
	$(BIN)/mlflow ui --backend-store-uri "sqlite:///$(abspath mlflow.db)" --host 127.0.0.1 --port $(UI_PORT)

# The champion goes into the BentoML store first; the service then serves exactly that tag and,
# unless FOLLOW=0, follows the registry: serving.tools.follow keeps .bentoml/serving-tag on the
# alias (every FOLLOW_INTERVAL seconds) and every worker swaps to the model it names, checked,
# without a restart. Stopping the service stops the follower too.
FOLLOW ?= 1
FOLLOW_INTERVAL ?= 5
# SHADOW=challenger: that alias's version also answers SHADOW_FRACTION of the requests, off the
# response path, for comparison (serving.shadow; docs/serving.md#shadowing-the-challenger).
SHADOW ?=
SHADOW_FRACTION ?= 0.1
serve: install
	@mkdir -p .bentoml
	PATH="$(abspath $(BIN)):$$PATH" BENTOML_HOME="$${BENTOML_HOME:-$(abspath .bentoml)}" \
		$(BIN)/python -m serving.tools.follow --once --tag-file .bentoml/serving-tag
	@echo "Try the model at http://127.0.0.1:$(PORT)/ui (API: http://127.0.0.1:$(PORT)/; predictions recorded under $${MONITOR_DIR:-monitoring}/)"
	@export PATH="$(abspath $(BIN)):$$PATH" BENTOML_HOME="$${BENTOML_HOME:-$(abspath .bentoml)}"; \
	if [ "$(FOLLOW)" = 1 ]; then \
		$(BIN)/python -m serving.tools.follow --tag-file .bentoml/serving-tag \
			--interval $(FOLLOW_INTERVAL) & follower=$$!; \
		trap 'kill $$follower 2>/dev/null' EXIT INT TERM; \
		export FOLLOW_FILE="$(abspath .bentoml/serving-tag)"; \
		echo "Following the registry's champion (FOLLOW=0 to serve this version only)"; \
	fi; \
	if [ -n "$(SHADOW)" ]; then \
		$(BIN)/python -m serving.tools.follow --tag-file .bentoml/shadow-tag --alias $(SHADOW) \
			--optional --interval $(FOLLOW_INTERVAL) & shadower=$$!; \
		trap 'kill $$follower $$shadower 2>/dev/null' EXIT INT TERM; \
		export SHADOW_FILE="$(abspath .bentoml/shadow-tag)" SHADOW_FRACTION="$(SHADOW_FRACTION)"; \
		echo "Shadowing the registry's $(SHADOW) on $(SHADOW_FRACTION) of the requests"; \
	fi; \
	BENTO_MODEL="$$(cat .bentoml/serving-tag)" \
		$(BIN)/bentoml serve serving.service:Classifier --host 127.0.0.1 --port $(PORT)

bench: install
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/forward_cost.py
	$(BIN)/python bench/serve_load.py

# The documentation site (docs/, mkdocs.yml), rebuilt on every edit. `make test` builds it with
# --strict (tests/unit/test_docs.py), so a broken link fails there.
docs: install docs-assets
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
