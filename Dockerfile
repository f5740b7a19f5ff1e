# tw-exporter container image.
#
#   docker build -t tw-exporter:0.1.0 .
#   docker run --rm -p 10093:10093 -e TW_EXPORTER_DSN_FILE=/run/secrets/dsn \
#     -v "$PWD/dsn:/run/secrets/dsn:ro" tw-exporter:0.1.0
#
# Configuration comes only from TW_EXPORTER_* environment variables and flags; no DSN or
# other secret is ever baked into the image. Needs BuildKit (the default since Docker 23)
# for the RUN --mount below; no syntax directive, so no frontend image is pulled.

# One pinned base for both stages: an exact Python release and the digest of its
# multi-platform index, so a rebuild gets the same bits. Bump both with Renovate/Dependabot.
ARG PYTHON_IMAGE=python:3.12.13-slim-bookworm@sha256:4766d8b510c428e595d74b9cc5bbb2fae8e26316fffb4adc89908d79aacd58a2

# ---------------------------------------------------------------- builder
# Turns the source into wheels: the project's own and every dependency's, so the runtime
# stage installs offline from this directory alone and never sees the source tree.
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

# Keep in step with exporter/__init__.py (a test checks); CI may pass the real values.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/tw-exporter/tw-exporter

LABEL org.opencontainers.image.title="tw-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the business metrics of a Twitter-like platform's PostgreSQL database" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A named account for the numeric user below, so libraries that look up the home directory
# (e.g. ~/.pgpass) get a clean "not found" instead of an error. No shell, no home.
RUN groupadd --system --gid 65532 nonroot \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin nonroot

# Install the wheels through a bind mount (they never land in a layer), byte-compile at
# install time (the root filesystem is read-only at run time), then drop pip itself: the
# running image needs no installer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels /wheels/tw_exporter-*.whl \
    && python -m pip uninstall --yes pip

USER 65532:65532
EXPOSE 10093

# For `docker run` / compose only: Kubernetes ignores HEALTHCHECK and uses the chart's
# probes. /healthz needs no credentials; the port follows TW_EXPORTER_LISTEN. Plain HTTP:
# with TLS in --web-config-file, run with --no-healthcheck (or HEALTHCHECK NONE downstream).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('TW_EXPORTER_LISTEN', ':10093').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["tw-exporter"]
CMD ["run"]
