# The two commands of the README. Every pip install goes through constraints.txt,
# which pins torch to the local CPU wheel (any other spec pulls CUDA builds).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -c constraints.txt
DEMO_OUT ?= demo_out

.PHONY: venv demo test test-slow lint clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml constraints.txt
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test,export]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/cmt-deeplab demo --out $(DEMO_OUT)

test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# The slow tests the default run leaves out (the demo, torchrun, export, compile, bf16).
test-slow: venv
	$(BIN)/python -m pytest -q -m slow

lint: venv
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
