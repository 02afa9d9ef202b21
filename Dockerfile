# watchd as a container: docs/container.md. Build with `make image`, which first puts
# wheels of watchd and every dependency into ./wheelhouse (on the host) with the u2netp
# model; this file only installs from there, so `docker build --network none` works.
#
# BASE: any Debian-based image with Python 3 and its venv module whose Python matches
# the wheels (the host's minor version; `make image` builds them with the host Python).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS install
COPY wheelhouse/*.whl /wheelhouse/
RUN python3 -m venv /opt/watchd \
 && /opt/watchd/bin/pip install --no-index --find-links /wheelhouse --no-cache-dir \
        --disable-pip-version-check 'watchd[heic]' \
 && find /opt/watchd -name tests -path '*site-packages/*/tests' -prune -exec rm -rf {} +

FROM ${BASE}
COPY --from=install /opt/watchd /opt/watchd
# The baked-in model: copied into /models on first start when that volume lacks it.
COPY wheelhouse/models/u2netp.onnx /opt/watchd/models/u2netp.onnx
ENV PATH=/opt/watchd/bin:$PATH \
    WATCHD_CONTAINER=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PUID=1000 PGID=1000 UMASK=022
VOLUME ["/data", "/state", "/models", "/config"]
# The entrypoint drops to PUID:PGID with setpriv and execs `watchd run` (never root).
ENTRYPOINT ["/opt/watchd/bin/python", "-m", "watchd.container"]
CMD ["run"]
# SIGTERM starts the drain (drain_seconds, default 30 s): give `docker stop` / compose's
# stop_grace_period more than that (compose.yaml: 45s).
STOPSIGNAL SIGTERM
# Asks the daemon itself over its control socket; a stuck or gone daemon fails.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/opt/watchd/bin/watchd", "status"]
