# Every target sets itself up: a .venv with the package installed editable, plus its test extra.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo bench fuzz clean

test: $(STAMP)
	$(BIN)/ruff check indexgrad tests
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/indexgrad grad examples/mlp.idx --wrt W1,B1,W2,B2
	$(BIN)/python examples/train_digits.py
	$(BIN)/python examples/train_cnn.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

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
