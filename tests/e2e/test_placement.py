"""Placement end to end: two nodes with different labels, runs pinned by label and by node id,
and runs no live node matches, which wait with a reason until such a node starts."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tests.fix_service import Api, Service, wait_until

TERMINAL = {"succeeded", "failed", "stopped", "timed_out", "lost"}
CODE = 'echo "$RUNVISOR_NODE"'


def nodes_up(api: Api, *node_ids: str) -> dict[str, dict[str, Any]] | None:
    items = {n["id"]: n for n in api.get("/api/v1/nodes").json()["items"]}
    if all(items.get(i, {}).get("state") == "up" for i in node_ids):
        return items
    return None


def test_each_run_runs_once_where_it_asked_and_a_run_no_node_matches_waits_with_a_reason(
    service_factory: Callable[..., Service],
) -> None:
    tag = os.getpid()
    id_a, id_b, id_c = f"place-a-{tag}", f"place-b-{tag}", f"place-c-{tag}"
    a = service_factory(id_a, RUNVISOR_NODE_LABELS="zone=a")
    b = service_factory(id_b, RUNVISOR_NODE_LABELS="zone=b,gpu=1")
    wait_until(lambda: nodes_up(a.api, id_a, id_b), 30, "both nodes to be up")

    plain = a.api.create_command(CODE)
    # A command's placement is the default of its runs.
    gpu = a.api.create_command(CODE, labels={"gpu": "1"})
    assert gpu["labels"] == {"gpu": "1"} and gpu["node"] is None

    # 40 runs, started through both nodes: by label (the request's, the command's), by node
    # id, and anywhere (the command's labels overridden by none).
    expected: dict[int, set[str]] = {}
    for i in range(40):
        api = (a if i % 2 else b).api
        match i % 4, i % 8:
            case 0, _:
                run, where = api.start_run(plain["id"], labels={"zone": "a"}), {id_a}
            case 1, _:
                run, where = api.start_run(gpu["id"]), {id_b}
            case 2, 2:
                run, where = api.start_run(plain["id"], node=id_a), {id_a}
            case 2, _:
                run, where = api.start_run(plain["id"], node=id_b), {id_b}
            case _:
                run, where = api.start_run(gpu["id"], labels={}), {id_a, id_b}
        expected[run["id"]] = where
        asked = run["placement"]
        assert asked["node"] in (None, *where) and run["queued_reason"] is None, run

    # Runs no live node may take say why, from the start.
    zone_c = a.api.start_run(plain["id"], labels={"zone": "c"})
    on_c = b.api.start_run(gpu["id"], node=id_c)
    assert zone_c["placement"] == {"node": None, "labels": {"zone": "c"}}
    assert zone_c["queued_reason"] == "no live node has labels zone=c"
    assert on_c["placement"] == {"node": id_c, "labels": {"gpu": "1"}}
    assert on_c["queued_reason"] == f"node {id_c} is not up (it has never registered)"

    for run_id, where in expected.items():
        run = a.api.wait_finished(run_id, timeout_s=90)
        assert run["status"] == "succeeded", run
        # Exactly once: one attempt, on the node it asked for, which printed its own id.
        assert len(run["attempts"]) == 1 and run["attempt"] == 1, run
        assert run["node"] in where and run["attempts"][0]["node"] == run["node"], run
        assert a.api.output(run_id) == f"{run['node']}\n".encode()
        assert run["queued_reason"] is None
    ran_anywhere = {a.api.run(i)["node"] for i, w in expected.items() if len(w) == 2}
    assert ran_anywhere <= {id_a, id_b}

    # Still waiting, still saying why, after the nodes' periodic refreshes.
    for run in (zone_c, on_c):
        again = a.api.run(run["id"])
        assert again["status"] == "queued" and again["queued_reason"] == run["queued_reason"]

    # A node that matches both starts: they run there, and the reasons are cleared.
    c = service_factory(id_c, RUNVISOR_NODE_LABELS="zone=c,gpu=1")
    for run in (zone_c, on_c):
        done = c.api.wait_finished(run["id"], timeout_s=60)
        assert done["status"] == "succeeded" and done["node"] == id_c, done
        assert len(done["attempts"]) == 1 and done["queued_reason"] is None
        assert c.api.output(run["id"]) == f"{id_c}\n".encode()


def test_placement_that_is_not_valid_is_refused_and_creates_nothing(api: Api) -> None:
    command = api.create_command("true")
    for body, field, words in [
        ({"labels": {"g pu": "1"}}, "labels.g pu", "label key 'g pu' must be 1-63 characters"),
        ({"labels": {"gpu": ""}}, "labels.gpu", "label value '' must be 1-63 characters"),
        ({"labels": {"gpu": 1}}, "labels.gpu", "must be a string"),
        ({"labels": ["gpu=1"]}, "labels", "must be an object"),
        ({"node": "a/b"}, "node", "node id 'a/b' must be 1-64 characters"),
        ({"node": 7}, "node", "must be a string"),
    ]:
        for path in ("/api/v1/commands", f"/api/v1/commands/{command['id']}/runs"):
            sent = {"code": "true", **body} if path == "/api/v1/commands" else body
            response = api.post(path, json=sent)
            assert response.status_code == 422, (path, body, response.text)
            error = response.json()["error"]
            assert error["code"] == "validation_error"
            assert error["details"][0]["field"] == field, error
            assert words in error["message"], error
    assert api.get("/api/v1/commands").json()["total"] == 1
    assert api.get("/api/v1/runs").json()["total"] == 0
    # A valid override of the command's placement (null node, no labels) is kept as given.
    pinned = api.create_command("true", node="elsewhere", labels={"gpu": "1"})
    run = api.start_run(pinned["id"], node=None, labels={})
    assert run["placement"] == {"node": None, "labels": {}}
    api.wait_finished(run["id"])
