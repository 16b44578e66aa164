"""`runvisor nodes`, and placement from `commands create` and `run`, against real nodes."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.client.cli_runner import cli, one_error_line
from tests.fix_service import VIEWER, Service


def test_nodes_lists_and_shows_the_nodes(service_factory: Callable[..., Service]) -> None:
    a = service_factory("cli-node-a", RUNVISOR_NODE_LABELS="gpu=1,zone=x")
    b = service_factory("cli-node-b")
    table = cli(a, "nodes")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "RUNNING"]
    by_id = {row.split()[0]: row.split() for row in rows}
    assert by_id["cli-node-a"][1] == "up" and "gpu=1,zone=x" in by_id["cli-node-a"]
    assert by_id["cli-node-b"][1] == "up"
    listed = json.loads(cli(b, "nodes", "--json").stdout)
    assert {node["id"] for node in listed["items"]} == {"cli-node-a", "cli-node-b"}
    one = cli(b, "nodes", "cli-node-a", "--json")
    assert one.returncode == 0, one.stderr
    shown, read = json.loads(one.stdout), a.api.get("/api/v1/nodes/cli-node-a").json()
    moving = {"seen_at", "lease_expires_at"}  # renewed every second
    assert set(shown) == set(read) and moving < set(read)
    assert {k: v for k, v in shown.items() if k not in moving} == {
        k: v for k, v in read.items() if k not in moving
    }
    fields = cli(b, "nodes", "cli-node-a")
    assert "labels:" in fields.stdout and '{"gpu":"1","zone":"x"}' in fields.stdout
    missing = cli(a, "nodes", "cli-node-zz")
    assert missing.returncode == 4
    assert one_error_line(missing).startswith("runvisor: 404 not_found")


def test_placement_from_the_cli(service_factory: Callable[..., Service]) -> None:
    a = service_factory("cli-place-a", RUNVISOR_NODE_LABELS="gpu=1")
    b = service_factory("cli-place-b")
    created = cli(a, "commands", "create", "echo placed", "--node", "cli-place-b", "--json")
    assert created.returncode == 0, created.stderr
    command = json.loads(created.stdout)
    assert command["node"] == "cli-place-b"
    on_b = json.loads(cli(a, "run", str(command["id"]), "--json").stdout)
    assert a.api.wait_finished(on_b["id"])["node"] == "cli-place-b"
    # Start-request overrides: no node, a label only a has.
    on_a = cli(b, "run", str(command["id"]), "--any-node", "--label", "gpu=1", "--json")
    assert on_a.returncode == 0, on_a.stderr
    run = json.loads(on_a.stdout)
    assert run["placement"] == {"node": None, "labels": {"gpu": "1"}}
    assert b.api.wait_finished(run["id"])["node"] == "cli-place-a"
    both = cli(b, "run", str(command["id"]), "--any-node", "--node", "cli-place-a")
    assert both.returncode == 2 and "--any-node" in both.stderr


def test_drain_a_node(service_factory: Callable[..., Service]) -> None:
    a = service_factory("cli-drain-a")
    b = service_factory("cli-drain-b")
    refused = cli(b, "drain", "cli-drain-a", token=VIEWER)
    assert refused.returncode == 2
    assert one_error_line(refused).startswith("runvisor: 403 forbidden")
    missing = cli(b, "drain", "cli-drain-zz")
    assert missing.returncode == 4
    one_error_line(missing)

    drained = cli(b, "drain", "cli-drain-a", "--deadline", "30", "--json")
    assert drained.returncode == 0, drained.stderr
    node = json.loads(drained.stdout)
    assert node["id"] == "cli-drain-a" and node["state"] == "draining"
    assert node["drain_deadline"] is not None
    table = cli(a, "nodes").stdout.splitlines()
    states = {line.split()[0]: line.split()[1] for line in table[1:]}
    assert states == {"cli-drain-a": "draining", "cli-drain-b": "up"}
    # A draining node takes no new run: the other one does.
    command = a.api.create_command("echo after the drain")
    run = json.loads(cli(a, "run", str(command["id"]), "--json").stdout)
    assert a.api.wait_finished(run["id"])["node"] == "cli-drain-b"
    # Without a deadline, for people: one line.
    again = cli(b, "drain", "cli-drain-b")
    assert again.returncode == 0 and again.stdout == "draining node cli-drain-b (state draining)\n"
