"""Starting actors' threads off the starting thread, several at once.

pykka's `Actor.start()` starts the actor's thread and, in `threading.Thread.start`, waits until
that thread runs. With a hundred busy threads the new one waits milliseconds for the GIL, and
so does its starter: the Supervisor took 4 ms of waiting (0.2 ms of CPU) per RunActor, one
after the other; 200 runs started at once were all spawned only 1 s after the first (B4b). An
actor whose class is `StartedByStarter` is started by a ThreadStarter's workers instead:
`start()` returns its ref at once (messages wait in its inbox, as they would anyway until its
`on_start` is done), and several threads come up at the same time.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

import pykka

from runvisor.logs import get_logger

log = get_logger(__name__)

WORKERS = 8  # threads starting threads: each waits for its new thread to get the GIL


class ThreadStarter:
    def __init__(self, workers: int = WORKERS) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="runvisor-thread-starter"
        )

    def start(self, start: Callable[[], None], on_failure: Callable[[BaseException], None]) -> None:
        """Call `start` in a worker; `on_failure(error)` there if it raises."""

        def run() -> None:
            try:
                start()
            except BaseException as exc:  # (RuntimeError: can't start new thread, say)
                log.error("actor thread not started", error=repr(exc))
                on_failure(exc)

        try:
            self._pool.submit(run)
        except RuntimeError:  # stopped (the service is ending): started here, then
            run()

    def stop(self) -> None:
        """Start what was asked for (the actors' refs are out), then end the workers."""
        self._pool.shutdown(wait=True)


class StartedByStarter(pykka.ThreadingActor):
    """A threading actor whose thread `thread_starter` starts, when the subclass sets one."""

    thread_starter: ThreadStarter | None = None

    def _start_actor_loop(self) -> None:  # pykka's hook: starts the thread of the actor loop
        starter = self.thread_starter
        if starter is None:
            super()._start_actor_loop()
        else:
            starter.start(super()._start_actor_loop, self._thread_not_started)

    def _thread_not_started(self, error: BaseException) -> None:
        """As if the actor had failed at once: on_failure reports it, and it is stopped."""
        try:
            self.on_failure(type(error), error, error.__traceback__)
        finally:
            pykka.ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
