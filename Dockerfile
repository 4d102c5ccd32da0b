# syntax=docker/dockerfile:1
# The consul-sd-operator image: `consul-sd operator` in a venv on python:3.11-slim, run as the
# non-root user 65532. Build: docker build -t consul-sd-operator:0.1.0 .
# Stage 1 builds the project's wheel and its runtime dependencies' wheels (no dev extra);
# stage 2 installs them into a pip-less venv, so the image holds no build tools and no pip in
# the venv. tests/packaging/test_wheel.py runs the same two commands outside Docker.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="consul-sd-operator" \
      org.opencontainers.image.description="Consul service discovery for Prometheus at fleet scale: ConsulDiscovery objects into file_sd ConfigMaps or ScrapeConfigs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="python:3.11-slim"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --no-cache-dir --no-index --find-links=/wheels "consul-sd-operator==${VERSION}" \
    && groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
USER 65532:65532
WORKDIR /tmp
# kopf's /healthz (--liveness-port) and Prometheus /metrics (--metrics-port).
EXPOSE 8080 9090
ENTRYPOINT ["consul-sd", "operator"]
CMD ["--standalone", "--all-namespaces"]
