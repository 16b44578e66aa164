-- runvisor history: commands, runs, their attempts, output chunks, audit.

CREATE TABLE commands (
    id               bigserial PRIMARY KEY,
    name             text,
    code             text NOT NULL,
    description      text NOT NULL DEFAULT '',
    timeout_s        double precision,
    stuck_after_s    double precision,
    restart          jsonb NOT NULL DEFAULT '{"policy": "never"}',
    max_output_bytes bigint NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       text,
    deleted_at       timestamptz
);
CREATE INDEX commands_created_idx ON commands (created_at, id) WHERE deleted_at IS NULL;

CREATE TABLE runs (
    id                bigserial PRIMARY KEY,
    command_id        bigint NOT NULL REFERENCES commands (id),
    code              text NOT NULL,           -- the code as it was when the run was created
    env               jsonb NOT NULL DEFAULT '{}',
    status            text NOT NULL DEFAULT 'queued',
    exit_code         integer,
    signal            integer,
    reason            text,
    node              text,
    pid               integer,
    attempt           integer NOT NULL DEFAULT 0,
    restart_count     integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    created_by        text,
    started_at        timestamptz,
    finished_at       timestamptz,
    output_bytes      bigint NOT NULL DEFAULT 0,
    output_truncated  boolean NOT NULL DEFAULT false,
    stop_requested_by text,
    stop_requested_at timestamptz,
    stop_grace_s      double precision,
    timeout_s         double precision,
    stuck_after_s     double precision,
    restart           jsonb NOT NULL DEFAULT '{"policy": "never"}',
    max_output_bytes  bigint NOT NULL,
    CONSTRAINT runs_status_known CHECK (status IN
        ('queued', 'running', 'restarting', 'succeeded', 'failed', 'stopped', 'timed_out', 'lost'))
);
CREATE INDEX runs_command_idx ON runs (command_id, id);
CREATE INDEX runs_status_idx ON runs (status, id);
CREATE INDEX runs_active_node_idx ON runs (node)
    WHERE status IN ('running', 'restarting');

CREATE TABLE run_attempts (
    run_id           bigint NOT NULL REFERENCES runs (id),
    attempt          integer NOT NULL,
    node             text NOT NULL,
    pid              integer,
    pid_start_ticks  bigint,                   -- /proc/PID/stat field 22: with pid, the process identity
    process_marker   text NOT NULL,            -- RUNVISOR_ATTEMPT_MARKER in every process of the attempt
    boot_id          text,                     -- the kernel's boot id: a pid means nothing after a reboot
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    exit_code        integer,
    signal           integer,
    reason           text,
    output_offset    bigint NOT NULL,          -- where this attempt's output begins in the run's output
    leftovers_killed integer NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, attempt)
);

-- Output as chunks keyed by byte offset: appending is O(chunk), reading from an offset an index scan.
CREATE TABLE run_output (
    run_id      bigint NOT NULL REFERENCES runs (id),
    byte_offset bigint NOT NULL,
    data        bytea NOT NULL,
    PRIMARY KEY (run_id, byte_offset)
);

CREATE TABLE audit (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,                  -- a principal ("admin:1a2b3c4d") or "node:NAME"
    action     text NOT NULL,
    command_id bigint,
    run_id     bigint,
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_run_idx ON audit (run_id, id) WHERE run_id IS NOT NULL;
