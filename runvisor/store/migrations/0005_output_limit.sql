-- The head-and-tail output limit. Past `max_output_bytes`, a run keeps the first half of the
-- limit (the head) and the last half (the tail) of everything it produced; the bytes between
-- are dropped. Offsets stay absolute positions in what the run produced: the gap is
-- [output_gap_start, output_gap_end), both NULL while nothing was dropped. `output_bytes`
-- counts every byte produced (the gap included).
ALTER TABLE commands
    ADD COLUMN on_output_limit text NOT NULL DEFAULT 'truncate'
        CONSTRAINT commands_on_output_limit_known CHECK (on_output_limit IN ('truncate', 'stop'));

ALTER TABLE runs
    ADD COLUMN on_output_limit  text NOT NULL DEFAULT 'truncate'
        CONSTRAINT runs_on_output_limit_known CHECK (on_output_limit IN ('truncate', 'stop')),
    ADD COLUMN output_gap_start bigint,
    ADD COLUMN output_gap_end   bigint;
