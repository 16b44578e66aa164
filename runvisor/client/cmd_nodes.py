"""`runvisor nodes [NODE_ID]` and `runvisor drain NODE_ID`."""

from __future__ import annotations

import click

from runvisor.client.api import RunvisorClient
from runvisor.client.options import api_command, json_option
from runvisor.client.output import labels_text, print_fields, print_json, print_table, when


@click.command("nodes")
@click.argument("node_id", required=False)
@json_option
@api_command
def nodes(*, client: RunvisorClient, node_id: str | None, as_json: bool) -> None:
    """List the nodes, or show one."""
    if node_id is not None:
        node = client.node(node_id)
        if as_json:
            print_json(node)
        else:
            print_fields(node)
        return
    page = client.nodes()
    if as_json:
        print_json(page)
        return
    print_table(
        page.get("items", []),
        [
            ("ID", lambda n: n.get("id")),
            ("STATE", lambda n: n.get("state")),
            ("RUNNING", lambda n: n.get("running")),
            ("QUEUED", lambda n: n.get("queued")),
            ("CAPACITY", lambda n: n.get("capacity") or "unlimited"),  # 0: no limit
            ("LABELS", lambda n: labels_text(n.get("labels"))),
            ("VERSION", lambda n: n.get("version")),
            ("STARTED", lambda n: when(n.get("started_at"))),
        ],
    )


@click.command("drain")
@click.argument("node_id")
@click.option(
    "--deadline",
    "deadline_s",
    type=click.FloatRange(min=0),
    help="seconds to let running runs finish before they are stopped (and restarted elsewhere)",
)
@json_option
@api_command
def drain(*, client: RunvisorClient, node_id: str, deadline_s: float | None, as_json: bool) -> None:
    """Drain a node (admin): it takes no new runs, and shows `draining` until empty."""
    node = client.drain(node_id, deadline_s=deadline_s)
    if as_json:
        print_json(node)
    else:
        click.echo(f"draining node {node_id} (state {node.get('state')})")
