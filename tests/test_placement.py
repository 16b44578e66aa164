"""Placement, the pure part: RUNVISOR_NODE_LABELS, matching, and why a run waits."""

from __future__ import annotations

import pytest

from runvisor.placement import (
    NodeView,
    Placement,
    PlacementError,
    check_node_id,
    parse_labels,
    unmet_reason,
)


def test_node_labels_setting() -> None:
    assert parse_labels("") == {}
    assert parse_labels(" gpu=1 , zone=eu-west.1,") == {"gpu": "1", "zone": "eu-west.1"}
    for bad, why in [
        ("gpu", "not key=value"),
        ("gpu=", "label value ''"),
        ("=1", "label key ''"),
        ("g pu=1", "label key 'g pu'"),
        ("gpu=1,gpu=2", "given twice"),
        ("k=" + "v" * 64, "1-63 characters"),
    ]:
        with pytest.raises(PlacementError, match=why):
            parse_labels(bad)
    with pytest.raises(PlacementError, match="node id"):
        check_node_id("no/slash")


def test_a_run_matches_a_node_with_every_label_and_its_id_if_pinned() -> None:
    assert Placement().matches("a", {})
    assert not Placement().pinned
    assert Placement(labels={"gpu": "1"}).matches("a", {"gpu": "1", "zone": "x"})
    assert not Placement(labels={"gpu": "1", "zone": "y"}).matches("a", {"gpu": "1", "zone": "x"})
    assert not Placement(labels={"gpu": "1"}).matches("a", {"gpu": "2"})
    assert Placement(node="a").matches("a", {}) and not Placement(node="a").matches("b", {})


def test_the_reason_names_what_is_missing() -> None:
    nodes = [
        NodeView("a", {"zone": "a"}, "up"),
        NodeView("b", {"gpu": "1"}, "draining"),
        NodeView("c", {"gpu": "1"}, "lost"),
    ]
    assert unmet_reason(Placement(), nodes) is None
    assert unmet_reason(Placement(labels={"zone": "a"}), nodes) is None
    assert unmet_reason(Placement(labels={"zone": "b", "gpu": "1"}), nodes) == (
        "no live node has labels gpu=1,zone=b"
    )
    assert unmet_reason(Placement(node="b"), nodes) == "node b is not up (draining)"
    assert unmet_reason(Placement(node="c"), nodes) == "node c is not up (lost)"
    assert unmet_reason(Placement(node="d"), nodes) == (
        "node d is not up (it has never registered)"
    )
    assert unmet_reason(Placement(node="a", labels={"gpu": "1"}), nodes) == (
        "node a does not have labels gpu=1"
    )
    assert unmet_reason(Placement(), nodes[1:]) == "no node is up"
