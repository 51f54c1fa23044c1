# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test e2e-deps lint bank archive bare-archive serve stop app apt-java apt-wordnet hierarchy clean

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
	$(BIN)/ruff format --check .

e2e-deps:  ## Debian chromium + npm playwright-core for the browser test (it skips, saying why, if this fails)
	-scripts/e2e-deps.sh

test: venv apt-java e2e-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -ra

APP_ARGS ?=
app: venv  ## the Gradio app on http://127.0.0.1:7860, talking to the TorchServe endpoint (see docs/app.md)
	$(BIN)/python -m app $(APP_ARGS)

demo: archive apt-java  ## TorchServe + the Gradio app on 127.0.0.1; prints both URLs (`make stop` stops both)
	scripts/demo.sh start

# ---- TorchServe: model archives and the server (docs/api.md) -----------------------------------------
BANK        ?= model_store/hint-bank
# where `make archive` writes hint.mar
STORE       ?= model_store
MAR_VERSION ?= $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' hint/__init__.py)
MAR_SRC     ?= build/mar-src
COMMA       := ,
# the bank's own hierarchy (docs/custom.md), when it has one
BANK_HIER    = $(if $(wildcard $(BANK)/hierarchy.json),$(BANK)/hierarchy.json$(COMMA))
# the bank's localisation head (hint/head.py), when it has one
BANK_HEAD    = $(if $(wildcard $(BANK)/head.safetensors),$(BANK)/head.safetensors$(COMMA))
# the neurons' exemplars and labels (hint/exemplars.py), when it has them
BANK_EXEMPLARS = $(if $(wildcard $(BANK)/exemplars.safetensors),$(BANK)/exemplars.safetensors$(COMMA))
# the weights file the bank's backbone was built from (offline build --weights FILE), when it was
WEIGHTS     ?=
# the archive's batchSize instead of handlers/model-config.yaml's 4: BATCH_SIZE=1 for a server with a KServe
# envelope (service_envelope: TorchServe's envelopes answer one request per batch, docs/api.md "KServe")
BATCH_SIZE  ?=
MODEL_CONFIG = $(if $(BATCH_SIZE),build/model-config.yaml,handlers/model-config.yaml)
# a clean copy of the hint package, shipped inside the archives (the worker imports it from the model dir):
# the core, hint.explain and hint.serve; never the build (hint/build) or the evaluation (hint/evaluation)
COPY_HINT   := rm -rf $(MAR_SRC) && mkdir -p $(MAR_SRC) model_store && cp -r hint $(MAR_SRC)/hint \
	&& rm -rf $(MAR_SRC)/hint/build $(MAR_SRC)/hint/evaluation \
	&& find $(MAR_SRC) -name __pycache__ -prune -exec rm -rf {} +

archive: venv  ## $(STORE)/hint.mar: handler + bank files (+ its head.safetensors, exemplars.safetensors and hierarchy.json, + WEIGHTS=FILE if built from one; sha256 checked now) + hint package; BATCH_SIZE=N
	@test -f $(BANK)/manifest.json || (echo "no concept bank at $(BANK) (build one, or make archive BANK=...)" >&2; exit 1)
	$(COPY_HINT)
	$(if $(BATCH_SIZE),mkdir -p $(dir $(MODEL_CONFIG)) && sed -E 's/^batchSize:[[:space:]]*[0-9]+/batchSize: $(BATCH_SIZE)/' handlers/model-config.yaml > $(MODEL_CONFIG))
	$(BIN)/python -c "import sys; from hint.bank import archive_main; sys.exit(archive_main(sys.argv[1:]))" \
		$(BANK) $(MAR_SRC) "$(WEIGHTS)"
	mkdir -p $(STORE)
	$(BIN)/torch-model-archiver --force --model-name hint --version $(MAR_VERSION) \
		--handler handlers/hint_handler.py --config-file $(MODEL_CONFIG) \
		--extra-files $(BANK)/manifest.json,$(BANK)/bank.safetensors,$(BANK_HEAD)$(BANK_EXEMPLARS)$(BANK_HIER)$(MAR_SRC) --export-path $(STORE)

bare-archive: venv  ## model_store/bare.mar: the plain top-5 classifier (benchmark baseline)
	$(COPY_HINT)
	$(BIN)/torch-model-archiver --force --model-name bare --version $(MAR_VERSION) \
		--handler handlers/bare_handler.py --config-file handlers/bare-config.yaml \
		--extra-files handlers/hint_handler.py,$(MAR_SRC) --export-path model_store

serve: archive apt-java  ## TorchServe on 127.0.0.1:8080 (token in key_file.json); `make stop` stops it
	scripts/serve.sh start

stop:
	scripts/demo.sh stop

clean:
	rm -rf $(VENV) build cache *.egg-info
