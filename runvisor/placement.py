"""Placement, the pure part: which node may take which run, and why a run waits (no I/O).

A run may ask for a node (its id) and for labels (all must match the node's
RUNVISOR_NODE_LABELS). A command's placement is the default; a start request's replaces it
field by field. The claim (store/journal.py) applies the same rule in SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

LABEL_PATTERN = r"^[A-Za-z0-9_.-]{1,63}$"
NODE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # as RUNVISOR_NODE_ID (config._parse_node_id)
MAX_LABELS = 32
_LABEL = re.compile(LABEL_PATTERN)
_NODE_ID = re.compile(NODE_ID_PATTERN)


class PlacementError(ValueError):
    """Labels or a node id that are not valid; the message says why."""


def check_label(what: str, text: str) -> str:
    if not _LABEL.fullmatch(text):
        raise PlacementError(
            f"label {what} {text!r} must be 1-63 characters of letters, digits, '_', '.' or '-'"
        )
    return text


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise PlacementError(f"at most {MAX_LABELS} labels")
    return {check_label("key", k): check_label("value", v) for k, v in labels.items()}


def check_node_id(text: str) -> str:
    if not _NODE_ID.fullmatch(text):
        raise PlacementError(
            f"node id {text!r} must be 1-64 characters of letters, digits, '_', '.' or '-'"
        )
    return text


def parse_labels(raw: str) -> dict[str, str]:
    """RUNVISOR_NODE_LABELS: `key=value,key=value`; blank: no labels. A key given twice is an
    error (which one would win is a guess)."""
    labels: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise PlacementError(f"{item!r} is not key=value")
        if key in labels:
            raise PlacementError(f"label {key!r} is given twice")
        labels[check_label("key", key)] = check_label("value", value)
    return check_labels(labels)


def show_labels(labels: Mapping[str, str]) -> str:
    """`gpu=1,zone=a`: as RUNVISOR_NODE_LABELS takes them, keys in order."""
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a run asks to run: a node id (None: any) and labels (all must match)."""

    node: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def pinned(self) -> bool:
        """Asks for something: not every node may take it."""
        return self.node is not None or bool(self.labels)

    def matches(self, node_id: str, node_labels: Mapping[str, str]) -> bool:
        if self.node is not None and self.node != node_id:
            return False
        return all(node_labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node as placement sees it: its id, labels and state as the API shows it (`up`,
    `draining`, `detached`, `stopped`, `lost`). Only an `up` node takes new runs."""

    id: str
    labels: Mapping[str, str]
    state: str


def unmet_reason(placement: Placement, nodes: Iterable[NodeView]) -> str | None:
    """Why no node may take a run with this placement now; None when one may."""
    nodes = list(nodes)
    up = [n for n in nodes if n.state == "up"]
    if any(placement.matches(n.id, n.labels) for n in up):
        return None
    wanted = show_labels(placement.labels)
    if placement.node is not None:
        node = next((n for n in nodes if n.id == placement.node), None)
        if node is None:
            return f"node {placement.node} is not up (it has never registered)"
        if node.state != "up":
            return f"node {placement.node} is not up ({node.state})"
        return f"node {placement.node} does not have labels {wanted}"
    if placement.labels:
        return f"no live node has labels {wanted}"
    return "no node is up"
