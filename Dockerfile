# The service image: the API (`cds-service serve`), the Celery workers and beat all run from it.
#
#   docker build -t sepsis-cds:0.1.0 .
#   docker build -t sepsis-cds:0.1.0-cuda12 \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 .
#
# The CUDA base brings CUDA 12 and cuDNN 9, what onnxruntime-gpu's CUDA provider needs; it has no
# Python, so the distribution's (3.12 on Ubuntu 24.04) is installed. Pin bases by digest in your
# registry (BASE_IMAGE=python:3.11.11-slim-bookworm@sha256:...) for reproducible builds.
# checkov:skip=CKV_DOCKER_2:Kubernetes ignores HEALTHCHECK; the chart probes /healthz and /readyz, and one HTTP check would fail the worker and beat containers that share this image
# checkov:skip=CKV_DOCKER_7:checkov does not resolve build arguments; the default below is a pinned version, and tests/helm refuses latest or untagged bases
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# python:*-slim has Python in /usr/local; a CUDA runtime base has none.
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version'

FROM base AS builder
WORKDIR /src
RUN python3 -m venv /opt/venv
# The project's packages only: training/ (and its LightGBM extra) is not needed to serve.
COPY pyproject.toml README.md ./
COPY cds_service cds_service
COPY fhir_adapters fhir_adapters
COPY workers workers
COPY model_artifacts model_artifacts
RUN /opt/venv/bin/python -m pip install --no-input .

FROM base AS runtime
# A numeric, unprivileged user: the chart runs every container as 10001:10001.
RUN groupadd --system --gid 10001 cds \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cds
COPY --from=builder /opt/venv /opt/venv
# The model registry, read-only (owned by root): the chart can mount another one instead.
COPY model_artifacts /opt/cds/model_artifacts
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    CDS_HOST=0.0.0.0 \
    CDS_PORT=8080 \
    CDS_SEPSIS__MODEL_ROOT=/opt/cds/model_artifacts
WORKDIR /opt/cds
USER 10001:10001
EXPOSE 8080
CMD ["cds-service", "serve"]
