# fedstream scheduler: agents, rounds, schedules, the REST admin API. No PyTorch, no CUDA.
# Build from the repository root: docker build -f docker/scheduler.Dockerfile -t fedstream-scheduler .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY core/pyproject.toml core/pyproject.toml
COPY core/src core/src
COPY services/scheduler/pyproject.toml services/scheduler/pyproject.toml
COPY services/scheduler/src services/scheduler/src
RUN python -m venv /opt/fedstream \
 && /opt/fedstream/bin/pip install ./core ./services/scheduler

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="fedstream-scheduler" \
      org.opencontainers.image.source="https://github.com/fedstream/fedstream"
ENV PATH=/opt/fedstream/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
COPY --from=build /opt/fedstream /opt/fedstream
# A read-only root file system works: nothing is written outside /tmp (an emptyDir).
USER 10001:10001
EXPOSE 50051 8080 9464
ENTRYPOINT ["fedstream-scheduler"]
