"""The Celery side of `--peer celery`: an app with one task that runs the same short run as B1
(`bash -c 'echo hi'`) and returns its output. The worker imports this module
(`celery -A bench.celery_app worker`) and finds `app`, made from the environment the bench
gives it; the bench's own client calls make_app()."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from bench.load import echo_hi

REDIS_URL_ENV = "RUNVISOR_BENCH_CELERY_REDIS_URL"
PREFIX_ENV = "RUNVISOR_BENCH_CELERY_PREFIX"
TASK = "runvisor_bench.echo_hi"


def run_echo_hi() -> str:
    return echo_hi().decode()


def make_app(redis_url: str, prefix: str) -> Any:
    """Redis as broker and result backend, every key and channel under `prefix` (so that the
    bench can delete them all afterwards and touches no one else's)."""
    app = Celery("runvisor_bench", broker=redis_url, backend=redis_url)
    keys = {"global_keyprefix": prefix}
    app.conf.update(
        broker_transport_options=keys,
        result_backend_transport_options=keys,
        task_default_queue=f"{prefix}tasks",
        broker_connection_retry_on_startup=True,
        result_expires=600,
        worker_hijack_root_logger=False,
    )
    app.task(name=TASK)(run_echo_hi)
    return app


if REDIS_URL_ENV in os.environ:  # imported by the worker
    app = make_app(os.environ[REDIS_URL_ENV], os.environ[PREFIX_ENV])
