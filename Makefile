# Every target sets itself up: a .venv with the package installed editable, plus its test extra.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test test-browser serve screenshot demo bench fuzz clean

test: $(STAMP)
	$(BIN)/ruff check indexgrad tests
	@test -x /usr/bin/chromium || echo "make test: no /usr/bin/chromium, so the browser tests are skipped (apt-get install chromium, then make test-browser)"
	$(BIN)/python -m pytest -n 2  # two workers: this machine's two cores (pytest-xdist)

# the playground in headless Chromium (Debian's chromium package); fails rather than skips without it
test-browser: $(STAMP)
	INDEXGRAD_BROWSER_TESTS=required $(BIN)/python -m pytest -m browser

serve: $(STAMP)
	$(BIN)/indexgrad serve

# the README's picture of the playground
screenshot: $(STAMP)
	$(BIN)/python tests/playground_screenshot.py docs/playground.png

demo: $(STAMP)
	$(BIN)/indexgrad grad examples/mlp.idx --wrt W1,B1,W2,B2
	$(BIN)/python examples/train_digits.py
	$(BIN)/python examples/train_cnn.py
	$(BIN)/python examples/train_transformer.py
	$(BIN)/python examples/train_lenet.py
	$(BIN)/indexgrad grad examples/deq.idx --wrt W,U,B
	$(BIN)/python examples/train_deq.py

# each implementation timed blocked, in processes of its own; BENCH_ARGS="--quick" for a smoke run,
# "--baseline DIR" to time an earlier copy of the package beside this one (benchmarks/README.md)
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/deq.py

fuzz: $(STAMP)
	$(BIN)/python -m pytest tests -m fuzz --hypothesis-profile=fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's metadata changes; the editable install follows the sources.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
