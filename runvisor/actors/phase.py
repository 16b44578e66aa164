"""Phase: where a RunActor's attempt is. What it has learnt of the outcome (the exit status,
the reason it ends) is kept beside it, in the RunActor."""

from __future__ import annotations

from enum import Enum


class Phase(Enum):
    RUNNING = "running"  # its process runs (or is being started)
    STOPPING = "stopping"  # a stop, a timeout or a stuck verdict: terminated, its exit awaited
    EXITED = "exited"  # its process exited (or never started): leftovers, the spool, the end
    DONE = "done"  # ended, stood down or detached: nothing more to do, the actor stops

    @property
    def done(self) -> bool:
        return self is Phase.DONE

    @property
    def awaits_exit(self) -> bool:
        """The process has not been seen to exit yet."""
        return self in (Phase.RUNNING, Phase.STOPPING)
