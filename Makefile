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

# Two passes: most of the suite on two pytest-xdist workers (one test file per worker at a time;
# the end-to-end tests mostly wait on daemons, so two share the two cores well), then, alone,
# the tests that stop this machine's own servers (marker serial) or start clusters and fleets of
# their own (marker fleet). Both passes always run; make fails if either failed.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --durations=15
test: $(TEST_STAMP)
	@rc=0; \
	$(PYTEST) -n 2 --dist loadfile -m "not serial and not fleet" || rc=$$?; \
	$(PYTEST) -m "serial or fleet" || rc=$$?; \
	exit $$rc

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
