-- Commands declare the variables a run may set (name -> default, or null for none) and carry
-- resource limits (LIMIT_NAMES -> positive integer or "unlimited"); a run keeps its command's
-- limits as they were when it was created.

ALTER TABLE commands
    ADD COLUMN env    jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';

ALTER TABLE runs
    ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
