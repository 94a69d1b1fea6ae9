# Two commands do all the set-up: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# This workplace caps pip at the torch build on its disk (see DEVELOPERS.md); elsewhere pip picks the build.
TORCH ?= $(shell test -d /etc/xdg/pip && echo "torch==2.14.1 torchvision==0.29.1" || echo "torch torchvision")
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: quickstart test smoke lint data postgresql chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Fashion-MNIST: Debian's package where apt-get exists, torchvision's download (into data/) otherwise.
data: $(VENV)/.installed
	@if [ -f $(FASHION_MNIST) ] || [ -d data/FashionMNIST/raw ]; then echo "Fashion-MNIST: present"; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	else $(BIN)/python -c "from autokd.data.fashion_mnist import _torchvision_download as d; from pathlib import Path; d(Path('data'))"; fi

# PostgreSQL for the database-storage tests: Debian's server package; the tests start (and stop) a
# private cluster on 127.0.0.1, so no service needs to run. Debian keeps initdb off the PATH.
postgresql:
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then echo "PostgreSQL: present"; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	else echo "install PostgreSQL (initdb and pg_ctl) for the database tests" >&2; exit 1; fi

# Chromium for the report's browser test: Debian's package, run headless by the test.
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then echo "Chromium: present"; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "install Chromium (the report's browser test opens the report in it)" >&2; exit 1; fi

quickstart: $(VENV)/.installed data
	$(BIN)/autokd search studies/quickstart.yaml

smoke: $(VENV)/.installed
	$(BIN)/autokd search studies/smoke.yaml

# Three pytest-xdist workers, one torch thread each, on two cores: one pytest process keeps 1.15 cores
# busy (many tests wait on processes, servers and locks), three keep 1.6 busy (README, Development).
TEST_WORKERS ?= 3
test: $(VENV)/.installed-test data postgresql chromium
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadgroup

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
