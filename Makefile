# The short commands a newcomer types. Each builds on `make dev`, so each works first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: dev test browser lint fmt demo demo-basic bench bench-peers bench-peers-quick clean

dev: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Sleipnir needs Python 3.11 or newer, this is " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[redis,postgres,amqp,web,dev,bench,demo]'
	@touch $@

test: dev browser
	$(BIN)/pytest

# Debian's Chromium for the dashboard's browser test (Playwright drives it; it never
# downloads a browser of its own). Installed with apt when missing and root may;
# otherwise the test says loudly that it skipped (and fails under CI=true).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "*** could not install chromium: the browser test will be skipped ***"; \
	  else echo "*** no $(CHROMIUM) and no root apt-get: the browser test will be skipped ***"; fi; }

lint: dev
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

fmt: dev
	$(BIN)/ruff check --fix src tests bench examples
	$(BIN)/ruff format src tests bench examples

# The photo demo (examples/photo_demo/): a web app hands uploads to 2 supervised worker
# processes, one is killed halfway, nothing is lost. DEMO_ARGS="--hold" keeps it running,
# "--keep" keeps the output images, "--images N" sets the scale. About 20 seconds.
demo: dev
	$(BIN)/python examples/photo_demo/run.py $(DEMO_ARGS)

# The smaller one: delay() timings, retries and a dead letter, two burst workers.
demo-basic: dev
	$(BIN)/python examples/basic_demo.py

bench: dev
	$(BIN)/python bench/sqlite_bench.py
	$(BIN)/python bench/http_bench.py
	$(BIN)/python bench/peers/run.py
	$(BIN)/python bench/amqp_bench.py

# Sleipnir, Celery, RQ, Dramatiq, Huey and arq on the Redis at 127.0.0.1:6379 (Redis
# databases 9-14, which must be free); about 10 minutes, redraws docs/img/bench-redis.png.
bench-peers: dev
	$(BIN)/python bench/peers/run.py

# The same with smaller counts and one run of each figure (about 3 minutes); no chart.
bench-peers-quick: dev
	$(BIN)/python bench/peers/run.py --quick --png none

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
