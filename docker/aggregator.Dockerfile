# fedstream aggregator: verifies streamed updates and folds them; commits model versions.
# No CUDA. PyTorch (CPU) only with --build-arg EXTRAS=distill, for server-side distillation.
# Build from the repository root: docker build -f docker/aggregator.Dockerfile -t fedstream-aggregator .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY core/pyproject.toml core/pyproject.toml
COPY core/src core/src
# The tasks (PyTorch) are installed only for the distill extra.
COPY tasks/pyproject.toml tasks/pyproject.toml
COPY tasks/src tasks/src
COPY services/aggregator/pyproject.toml services/aggregator/pyproject.toml
COPY services/aggregator/src services/aggregator/src
RUN python -m venv /opt/fedstream \
 && /opt/fedstream/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" ./core ${EXTRAS:+./tasks} \
      "./services/aggregator${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="fedstream-aggregator" \
      org.opencontainers.image.source="https://github.com/fedstream/fedstream"
ENV PATH=/opt/fedstream/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp \
    FEDSTREAM_AGGREGATOR_SPOOL_DIR=/var/spool/fedstream
COPY --from=build /opt/fedstream /opt/fedstream
# Spooled uploads go to /var/spool/fedstream (mount an emptyDir or a volume there); the root
# file system can be read-only.
USER 10001:10001
EXPOSE 50052 9464
ENTRYPOINT ["fedstream-aggregator"]
