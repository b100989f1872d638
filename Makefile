# Two entry points: `make demo` (the main job, end to end) and `make test` (the suite).
# Both create their own virtual environment with the pinned dependencies.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# DATA: a corpus folder, or "synthetic" (espeak-ng voices); default: the shipped real speech.
DATA ?= data/librispeech-mini
OUT ?= demo_output
demo: $(STAMP)
	@command -v espeak-ng >/dev/null || [ "$(DATA)" != synthetic ] || apt-get install -y -q espeak-ng >/dev/null || \
	    (apt-get update -q >/dev/null && apt-get install -y -q espeak-ng >/dev/null)
	PY=$(abspath $(PY)) recipes/VoxCeleb/demo.sh "$(DATA)" "$(OUT)"

test: $(STAMP)
	@command -v espeak-ng >/dev/null || apt-get install -y -q espeak-ng >/dev/null || \
	    (apt-get update -q >/dev/null && apt-get install -y -q espeak-ng >/dev/null)
	$(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
