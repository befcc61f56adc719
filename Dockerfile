# The sagastream worker image: Debian's Python 3.11 and the sagastream wheel with its console
# extra (`sagastream console`), installed at build time into /opt/sagastream, run as an
# unprivileged user. /app is the project folder (the demo's
# topology.yaml and schemas/ until a project's own are copied over it):
#
#   scripts/docker-images build worker      # wheels into build/docker/wheels, then this build
#
# By hand: `pip wheel --wheel-dir build/docker/wheels '.[console]'` first (the image installs only from
# there, without an index). BASE is the locally built Debian root filesystem; with Docker Hub,
# `--build-arg BASE=debian:bookworm-slim` works the same.
ARG BASE=localhost/sagastream/debian:bookworm

FROM ${BASE} AS python
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM python AS install
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
COPY build/docker/wheels/ /wheels/
RUN python3.11 -m venv /opt/sagastream \
 && /opt/sagastream/bin/pip install --no-cache-dir --no-index --find-links /wheels 'sagastream[console]'

FROM python
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/sagastream --create-home sagastream \
 && mkdir -p /app/schemas
COPY --from=install /opt/sagastream /opt/sagastream
COPY topology.yaml /app/
COPY schemas/*.avsc /app/schemas/
# The metrics and health port listens on every interface of the container (0.0.0.0), so that
# Prometheus and the orchestrator's probes reach it over the container network; it serves
# read-only GETs within the HTTP limits (SAGASTREAM_HTTP_*). Publish it on the host's
# loopback only (docker-compose.yml publishes nothing of it), or set SAGASTREAM_METRICS_HOST.
ENV PATH=/opt/sagastream/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    SAGASTREAM_TOPOLOGY_FILE=/app/topology.yaml \
    SAGASTREAM_DATA_DIR=/var/lib/sagastream \
    SAGASTREAM_METRICS_HOST=0.0.0.0 \
    SAGASTREAM_METRICS_PORT=9100
USER sagastream
WORKDIR /app
VOLUME /var/lib/sagastream
EXPOSE 9100
# /healthz: 200 while every role of the worker runs (one-shot commands have no port: "none")
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["python3.11", "-c", \
    "import os, urllib.request as u; p = os.environ.get('SAGASTREAM_METRICS_PORT', '0'); p == '0' or u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=4)"]
ENTRYPOINT ["sagastream"]
CMD ["worker", "--role", "all", "--loglevel", "info"]
