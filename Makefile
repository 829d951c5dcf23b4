# Two commands matter: `make demo` and `make test`. Both set themselves up.
# The venv (torch is ~5 GB) and the broker jars live outside the clone, in
# ~/.cache/stream-app, so a second run does not reinstall them.

CACHE   ?= $(or $(STREAM_APP_CACHE_DIR),$(HOME)/.cache/stream-app)
VENV    ?= $(CACHE)/venv
# The broker jars (and the demo's broker) follow CACHE too: stream_app reads this
# (absolute: a process the tests start elsewhere resolves it alike; no spaces, as VENV).
export STREAM_APP_CACHE_DIR := $(abspath $(CACHE))
PY      := $(VENV)/bin/python
APP     := $(VENV)/bin/stream-app
# The editable install points at one clone: the stamp names this clone's path
# too, so a venv shared by clones (or by CI runs in different folders) is
# re-pointed at the clone being run instead of testing another one's code.
# And the Python that makes it: a cached venv whose base Python moved is made again.
STAMP   := $(VENV)/.stream-app-$(shell (cat pyproject.toml constraints.txt scripts/bootstrap.sh; echo "$(CURDIR)"; python3 -c 'import sys; print(sys.executable, sys.version)') | cksum | cut -d' ' -f1)
DATA    ?= ../shared/data/movielens-1m
# System tools (Java, Maven, kcat, Prometheus): installed when missing, see the script.
SYSDEPS := bash scripts/sysdeps.sh

PHONY_BENCH := bench-deps
.PHONY: $(PHONY_BENCH) venv lock tools test test-unit test-integration test-long demo broker broker-stop topics bench bench-quick lint clean

venv: $(STAMP)
# Order-only: the stamp's name already hashes these files' content. As normal
# prerequisites, a fresh clone's newer timestamps re-ran the install every time.
$(STAMP): | pyproject.toml constraints.txt scripts/bootstrap.sh
	$(PY) -c "import pip" 2>/dev/null || $(SYSDEPS) venv
	bash scripts/bootstrap.sh "$(VENV)"
	rm -f $(VENV)/.stream-app-*
	touch $@

# constraints.txt pins every installed package to what the venv holds now: run it
# after upgrading a dependency there, then `make test`, and commit both.
lock: bench-deps
	{ sed -n '/^#/p' constraints.txt; $(VENV)/bin/pip freeze --all --exclude-editable; } > constraints.tmp
	mv constraints.tmp constraints.txt

# Each target names the system tools it needs (TOOLS); `tools` installs the missing
# ones before `venv` downloads torch, so a machine that cannot get them stops early.
tools:
	$(SYSDEPS) $(TOOLS)

test: TOOLS = java mvn kcat promtool prometheus
test: tools venv
	$(PY) -m pytest -q

test-unit: TOOLS = promtool
test-unit: tools venv
	$(PY) -m pytest -q tests/unit stream_app

test-integration: TOOLS = java mvn kcat prometheus
test-integration: tools venv
	$(PY) -m pytest -q tests/integration

test-long: TOOLS = java mvn
test-long: tools venv
	$(PY) -m pytest -q --run-slow tests/reliability

demo: TOOLS = java mvn
demo: tools venv
	$(APP) demo --data "$(DATA)"

broker: TOOLS = java mvn
broker: tools venv
	$(APP) broker start

broker-stop: venv
	$(APP) broker stop

topics: venv
	$(APP) topics create

bench-deps: venv
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[test,demo,bench]"

bench: bench-deps
	$(PY) -m bench.run --out bench/results

bench-quick: bench-deps
	$(PY) -m bench.run --quick --out bench/results

lint: venv
	$(VENV)/bin/ruff check stream_app tests bench deploy
	$(VENV)/bin/mypy stream_app

clean:
	rm -rf .pytest_cache build *.egg-info
