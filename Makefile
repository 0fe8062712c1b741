# Two commands set up and use a fresh machine (see README):
#   make quickstart   generate the shapes dataset, train, evaluate and export the small model
#   make test         run the test suite (make test-fast: without the slow tests)
# Each creates .venv/ with the pinned stack on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: quickstart test test-fast lint lock clean-quickstart

$(STAMP): setup.cfg requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-lock.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

quickstart: $(STAMP)
	$(PY) -m paa_tf.cli.quickstart

# Test-only packages (PyTorch for the released-model parity tests); quickstart never needs them.
$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-test.txt
	touch $(TEST_STAMP)

# Two pytest workers, one test file each at a time (a file's module fixtures stay in one
# process); TEST_WORKERS=0 runs in this process alone.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: $(TEST_STAMP)
	$(PYTEST) tests

# The quick loop: every module, without the tests marked slow (multi-process, trainings).
test-fast: $(TEST_STAMP)
	$(PYTEST) -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check paa_tf bin tests bench

# Re-pin the whole environment after changing a pin in setup.cfg.
lock:
	rm -rf /tmp/paa-lock-venv && $(PYTHON) -m venv /tmp/paa-lock-venv
	/tmp/paa-lock-venv/bin/pip install -q -e '.[dev]'
	/tmp/paa-lock-venv/bin/pip freeze --all --exclude-editable | grep -v -e '^paa-tf' -e '^pip==' > requirements-lock.txt.new
	(head -2 requirements-lock.txt; cat requirements-lock.txt.new) > requirements-lock.txt.tmp
	rm requirements-lock.txt.new && mv requirements-lock.txt.tmp requirements-lock.txt

clean-quickstart:
	rm -rf data/shapes runs/quickstart
