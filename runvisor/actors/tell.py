"""Telling an actor that may have ended: its news has no reader then, and that is fine."""

from __future__ import annotations

import contextlib
from typing import Any

import pykka


def tell_quietly(ref: pykka.ActorRef[Any], message: object) -> None:
    """Tell, unless the actor has ended already (an exit can be noticed after a stand-down, a
    flush answered after the attempt's end)."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)
