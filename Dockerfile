# runvisor: one node. `docker compose up` (see docker-compose.yml) runs two of them against
# PostgreSQL and Valkey; `docker run` without RUNVISOR_DATABASE_URL / RUNVISOR_REDIS_URL uses
# the embedded servers under RUNVISOR_DATA_DIR instead (mount a volume there to keep them).
FROM python:3.11-slim

# The runs are bash scripts; procps gives them (and operators) ps, pkill, free and top.
# Unpinned on purpose: Debian's mirrors drop superseded versions, which breaks pinned builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash procps \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# What gets copied is filtered by .dockerignore (no .venv, .git, caches, data, tests).
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir .

# A fixed uid, so that volumes keep their ownership across rebuilds. The data dir is created
# here, owned by that user, so that a named volume mounted on it starts out writable.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/runvisor \
        --shell /bin/bash runvisor \
    && install -d -o runvisor -g runvisor -m 0750 /var/lib/runvisor

# Inside a container 127.0.0.1 (runvisor's default) is unreachable from a published port.
ENV RUNVISOR_DATA_DIR=/var/lib/runvisor \
    RUNVISOR_HOST=0.0.0.0 \
    RUNVISOR_PORT=8080

# The user runvisor, by number so that Kubernetes' runAsNonRoot can verify it is not root.
USER 10001:10001
WORKDIR /home/runvisor
EXPOSE 8080

# No curl in the slim image: python asks /healthz (open, no token needed).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RUNVISOR_PORT', '8080'), timeout=3)"]

ENTRYPOINT ["runvisor"]
CMD ["serve"]
