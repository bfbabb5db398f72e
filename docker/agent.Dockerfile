# fedstream client agent: trains on the site's data on its GPU.
# CUDA (default): docker build -f docker/agent.Dockerfile -t fedstream-agent .
# CPU variant:    docker build -f docker/agent.Dockerfile --build-arg VARIANT=cpu -t fedstream-agent:cpu .
ARG VARIANT=cuda
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG CPU_IMAGE=ubuntu:24.04

FROM ${CUDA_IMAGE} AS base-cuda
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

FROM ${CPU_IMAGE} AS base-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
# Ubuntu's python3 (3.12 on 24.04): the base image's tag pins the release, and apt's security
# updates replace exact package versions, so they are not pinned here.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/*

FROM base AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY core/pyproject.toml core/pyproject.toml
COPY core/src core/src
COPY tasks/pyproject.toml tasks/pyproject.toml
COPY tasks/src tasks/src
COPY services/client-agent/pyproject.toml services/client-agent/pyproject.toml
COPY services/client-agent/src services/client-agent/src
# PyTorch 2.13.0 from the index of the variant (a CUDA 12.8 build, or the CPU build).
RUN python3 -m venv /opt/fedstream \
 && /opt/fedstream/bin/pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && /opt/fedstream/bin/pip install ./core ./tasks ./services/client-agent

FROM base
LABEL org.opencontainers.image.title="fedstream-agent" \
      org.opencontainers.image.source="https://github.com/fedstream/fedstream"
ENV PATH=/opt/fedstream/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
COPY --from=build /opt/fedstream /opt/fedstream
# The site's data is mounted read-only (FEDSTREAM_AGENT_DATA__PATH); nothing is written outside /tmp.
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["fedstream-agent"]
