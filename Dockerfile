# runvisor: one node. `docker compose up` (see docker-compose.yml) runs two of them against
# PostgreSQL and Valkey; `docker run` without RUNVISOR_DATABASE_URL / RUNVISOR_REDIS_URL uses
# the embedded servers under RUNVISOR_DATA_DIR instead (mount a volume there to keep them).
FROM python:3.11-slim

# The runs are bash scripts; procps gives them (and operators) ps, pkill, free and top;
# util-linux's setpriv switches each run to the unprivileged run user.
# Unpinned on purpose: Debian's mirrors drop superseded versions, which breaks pinned builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash procps util-linux \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# What gets copied is filtered by .dockerignore (no .venv, .git, caches, data, tests).
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir .

# The user the runs execute as, with a fixed uid so that files the runs leave keep their
# ownership across rebuilds. The service itself stays root in the container so that a run,
# executing as this user, cannot read the service's environment (its tokens), its data dir or
# spool, nor signal it. Started with `--user 10001` instead, the service runs its runs as
# itself: no isolation between them (the README says what that means).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/runvisor \
        --shell /bin/bash runvisor \
    && install -d -m 0711 /var/lib/runvisor

# Inside a container 127.0.0.1 (runvisor's default) is unreachable from a published port.
ENV RUNVISOR_DATA_DIR=/var/lib/runvisor \
    RUNVISOR_HOST=0.0.0.0 \
    RUNVISOR_PORT=8080 \
    RUNVISOR_RUN_AS=runvisor

USER root
WORKDIR /var/lib/runvisor
EXPOSE 8080

# No curl in the slim image: python asks /healthz (open, no token needed).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RUNVISOR_PORT', '8080'), timeout=3)"]

ENTRYPOINT ["runvisor"]
CMD ["serve"]
