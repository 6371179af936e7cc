# mtl-litmus: `make demo` runs the demo study end to end; `make test` runs the test suite.
# Both create .venv (Python 3.11) and install the project on first use.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
STORAGE ?= litmus_results
DEMO_NAME ?= demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test test-fast bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch>=2.2,<2.15" "torchvision>=0.17,<0.30"
	$(PY) -m pip install --quiet -e ".[test,nlp]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/litmus run search_spaces/demo.yaml --storage $(STORAGE) --name $(DEMO_NAME)
	$(VENV)/bin/litmus analyze $(STORAGE)/$(DEMO_NAME) --out $(STORAGE)/$(DEMO_NAME)/report

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/analysis_bench.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
