# Commands a newcomer types; see README.md.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# The machine's pip config adds a folder holding a CPU-only torch wheel; ignore it so
# that torch comes from the registry by name (its default build).
PIPENV  := PIP_FIND_LINKS= PIP_DISABLE_PIP_VERSION_CHECK=1
# Reports and logs hold non-ASCII text (±, progress bars); do not depend on the locale.
export PYTHONUTF8 = 1

.PHONY: install test test-fast demo bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIPENV) $(PY) -m pip install --upgrade pip setuptools wheel
	$(PIPENV) $(PY) -m pip install -e ".[test]"
	touch $(STAMP)

# The whole suite, slow tests included (this is what CI runs).
test: install
	$(VENV)/bin/pytest --run-slow --durations=25

# The quick local loop: slow tests are skipped.
test-fast: install
	$(VENV)/bin/pytest

demo: install
	$(VENV)/bin/medattn demo --out $(or $(OUT),demo_output)

bench: install
	$(VENV)/bin/medattn bench blocks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
