"""The commands recently started, kept in memory so that starting a run is one round trip.

A command never changes once created; it can only be deleted. So a copy read once stays
right, except for its existence, which the run's INSERT checks itself (it inserts only while
the command is there, in the same statement): a deleted command fails the start, whichever
node deleted it, and its entry is dropped then.
"""

from __future__ import annotations

from collections import OrderedDict

from runvisor.models import Command

MAX_COMMANDS = 1024  # a bound, not a working set: an operator's commands are far fewer


class CommandCache:
    """Least recently used commands by id, at most `max_size` (for the event loop's thread)."""

    def __init__(self, max_size: int = MAX_COMMANDS) -> None:
        self._max_size = max_size
        self._commands: OrderedDict[int, Command] = OrderedDict()

    def __len__(self) -> int:
        return len(self._commands)

    def get(self, command_id: int) -> Command | None:
        command = self._commands.get(command_id)
        if command is not None:
            self._commands.move_to_end(command_id)
        return command

    def put(self, command: Command) -> None:
        self._commands[command.id] = command
        self._commands.move_to_end(command.id)
        while len(self._commands) > self._max_size:
            self._commands.popitem(last=False)

    def forget(self, command_id: int) -> None:
        self._commands.pop(command_id, None)
