"""The JSON bodies of the open probes, `/healthz` and `/readyz` (see responses.py for how the
models build and document a body)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from runvisor.http.responses import ResponseModel


class Health(ResponseModel):
    status: Literal["ok"]


class UidsInUse(ResponseModel):
    first: int
    last: int
    in_use: int


class Isolation(ResponseModel):
    """Who runs execute as on this node, and how their processes are tracked."""

    user: Annotated[
        str | None,
        Field(
            description="the user runs execute as (RUNVISOR_RUN_AS); null when each attempt "
            "has a uid of its own"
        ),
    ]
    uid: int | None
    gid: int | None
    uids: Annotated[
        UidsInUse | None,
        Field(
            description="RUNVISOR_RUN_UIDS: the range each attempt gets a uid of its own "
            "from, and how many of it attempts hold now; else null"
        ),
    ]
    process_tracking: Annotated[
        Literal["cgroup", "scan"],
        Field(description="cgroup: one cgroup v2 per attempt; scan: /proc scans"),
    ]
    cgroup: Annotated[str | None, Field(description="this node's cgroup dir")]
    cgroup_controllers: list[str]
    no_cgroup_reason: str | None
    cgroup_favordynmods: Annotated[
        bool | None,
        Field(
            description="the cgroup v2 mount has favordynmods: moving a run's process into its "
            "cgroup costs no RCU grace period (about 10 ms a run without); null without cgroups"
        ),
    ]


class Readiness(ResponseModel):
    status: Literal["ready", "unavailable"]
    stores: Annotated[
        dict[str, str], Field(description='each store (postgres, redis): "ok", or "down: why"')
    ]
    runs: Isolation
