-- The fleet: one row per node that has ever started, kept up to date by the node itself.
-- `state` is what the node said last: up, draining, detached, stopped. `lost` is not stored:
-- a node is lost when its state is up or draining and its lease (Redis) is gone.
CREATE TABLE nodes (
    id             text PRIMARY KEY,
    labels         jsonb NOT NULL DEFAULT '{}',       -- RUNVISOR_NODE_LABELS, key -> value
    version        text NOT NULL,
    capacity       integer NOT NULL,                  -- RUNVISOR_MAX_RUNNING
    mechanism      text NOT NULL,                     -- attempt-end mechanism: cgroup | scan
    state          text NOT NULL DEFAULT 'up',
    started_at     timestamptz NOT NULL DEFAULT now(),
    seen_at        timestamptz NOT NULL DEFAULT now(), -- the node's last heartbeat here
    drain_deadline timestamptz,                       -- while draining: when what remains is stopped
    detached_until timestamptz                        -- while detached: no takeover before this
);

-- Placement: a node id and labels (all must match) a run asks for; a command's are defaults,
-- a start request's override them. A run stays queued while no live node matches, and says why.
ALTER TABLE commands
    ADD COLUMN place_node   text,
    ADD COLUMN place_labels jsonb NOT NULL DEFAULT '{}';

ALTER TABLE runs
    ADD COLUMN place_node    text,
    ADD COLUMN place_labels  jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN queued_reason text;
