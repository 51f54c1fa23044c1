# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint bank archive serve stop app apt-java apt-wordnet hierarchy clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

apt-java:  ## TorchServe 0.12 needs Java 17
	@command -v java >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q openjdk-17-jre-headless)

apt-wordnet:  ## only to regenerate the committed hierarchy
	@test -f /usr/share/wordnet/data.noun || (apt-get update -q && apt-get install -y -q wordnet-base)

hierarchy: apt-wordnet venv
	$(BIN)/python scripts/build_hierarchy.py

lint: venv
	$(BIN)/ruff check .

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

demo: venv
	$(BIN)/python -m offline demo

clean:
	rm -rf $(VENV) build cache *.egg-info
