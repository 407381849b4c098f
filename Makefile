# The two commands a new user needs: `make run` and `make test`. Both do their own set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

TEST_STAMP := $(VENV)/.test-installed

.PHONY: run test setup stop status bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade 'pip>=23.1'
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(PY) -m enstratus_workers.demo

stop:
	etc/init.d/enstratus-workers stop
	etc/init.d/enstratus-km stop

status:
	etc/init.d/enstratus-workers status; etc/init.d/enstratus-km status

# The test suite's own actions are a real plug-in package, installed into the venv like any other.
$(TEST_STAMP): $(STAMP) tests/plugin/pyproject.toml
	$(PY) -m pip install -q -c constraints.txt -e tests/plugin
	touch $(TEST_STAMP)

test: $(TEST_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) bench/throughput.py

# A system install as the enStratus docs lay it out: /etc/init.d/enstratus-workers,
# $(PREFIX)/worker/{bin,classes,venv}, $(PREFIX)/km. DESTDIR is a scratch root that runs where it
# is (see enstratus_workers/install.py). The logic is in that module; these targets only call it.
PREFIX ?= /services
ENSTRATUS_USER ?= enstratus

.PHONY: install uninstall

install:
	$(PYTHON) -m enstratus_workers.install install --destdir '$(DESTDIR)' --prefix '$(PREFIX)' --user '$(ENSTRATUS_USER)'

uninstall:
	$(PYTHON) -m enstratus_workers.install uninstall --destdir '$(DESTDIR)' --prefix '$(PREFIX)'
