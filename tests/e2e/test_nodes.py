"""Several nodes on one PostgreSQL and Redis: any node answers any request."""

from __future__ import annotations

import redis

from runvisor.protocol import StopRequest
from runvisor.store.live import LiveState, redis_client
from runvisor.store.redis_keys import RedisKeys
from tests.fix_service import Service
from tests.polling import wait_until


def test_a_stop_sent_to_another_node_reaches_the_owner(service_factory) -> None:
    node_a: Service = service_factory("node-a")
    node_b: Service = service_factory("node-b")
    run = node_a.api.run_code("echo started; sleep 1000")
    node_a.api.wait_status(run["id"], "running")
    assert node_b.api.run(run["id"])["node"] == "node-a"
    response = node_b.api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 1})
    assert response.status_code == 202
    final = node_b.api.wait_finished(run["id"], timeout_s=10)
    assert final["status"] == "stopped" and final["node"] == "node-a"
    assert not node_a.run_processes()
    assert node_b.api.output(run["id"]) == b"started\n"


def test_malformed_control_messages_are_logged_and_the_next_stop_still_arrives(
    service_factory, redis_server_url: str, redis_prefix: str
) -> None:
    node_a: Service = service_factory("node-a")
    run = node_a.api.run_code("echo started; sleep 1000")
    node_a.api.wait_status(run["id"], "running")
    keys = RedisKeys(redis_prefix)
    channel = keys.node_control("node-a")
    raw = redis.Redis.from_url(redis_server_url)
    other_node = LiveState(redis_client(redis_server_url), keys)
    garbage = [b"[1]", b"5", b"\xff", b'{"type": "stop", "run_id": "x"}', b'{"type": "other"}']
    try:
        # Redis drops what is published to nobody: wait for node-a's listener to subscribe.
        wait_until(lambda: raw.pubsub_numsub(channel)[0][1] >= 1, 10, "node-a to listen")
        for message in garbage:
            raw.publish(channel, message)
        # Not recorded in PostgreSQL, so node-a's own re-delivery (which reads the stops
        # recorded there) cannot stop the run: only its listener can.
        assert other_node.send_stop("node-a", StopRequest(run["id"], 1.0, "admin:elsewhere"))
        final = node_a.api.wait_finished(run["id"], timeout_s=10)
    finally:
        other_node.close()
        raw.close()
    assert final["status"] == "stopped" and final["reason"] == "stopped by admin:elsewhere"
    log = node_a.log_path.read_text(errors="replace")
    assert log.count("ignored a malformed control message") == len(garbage)


def test_the_runs_of_a_node_that_stays_away_are_taken_over_and_restarted(
    service_factory,
) -> None:
    fast = {"RUNVISOR_LEASE_TTL_S": "2"}
    node_a: Service = service_factory("node-a", **fast)
    node_b: Service = service_factory("node-b", **fast)
    run = node_a.api.run_code(
        'echo "attempt $RUNVISOR_ATTEMPT on $RUNVISOR_NODE"; sleep 1000',
        restart={"policy": "on-failure", "max_restarts": 1, "backoff_s": 0.1},
    )
    wait_until(lambda: node_a.api.output(run["id"]) == b"attempt 1 on node-a\n", 10, "attempt 1")
    assert node_a.run_processes()
    node_a.kill()  # the node is gone; its lease expires after 2 s
    wait_until(
        lambda: node_b.api.output(run["id"]).endswith(b"attempt 2 on node-b\n"),
        30,
        "node-b to take the run over",
    )
    current = node_b.api.run(run["id"])
    assert current["node"] == "node-b" and current["status"] == "running"
    assert [a["reason"] for a in current["attempts"]] == ["lost", None]
    # The old attempt's processes (on this same machine) were killed by node-b.
    wait_until(lambda: not node_a.run_processes(), 5, "the old attempt's processes to be gone")


def test_a_node_restarted_within_its_lease_keeps_its_runs(service_factory) -> None:
    node_a: Service = service_factory("node-a", RUNVISOR_LEASE_TTL_S="30")
    service_factory("node-b", RUNVISOR_LEASE_TTL_S="30")
    run = node_a.api.run_code("echo one; sleep 2; echo two")
    wait_until(lambda: node_a.api.output(run["id"]) == b"one\n", 10, "the first line")
    assert node_a.stop() == 0
    again: Service = service_factory("node-a", RUNVISOR_LEASE_TTL_S="30")
    final = again.api.wait_finished(run["id"], timeout_s=20)
    assert final["status"] == "succeeded" and final["node"] == "node-a"
    assert len(final["attempts"]) == 1 and again.api.output(run["id"]) == b"one\ntwo\n"
