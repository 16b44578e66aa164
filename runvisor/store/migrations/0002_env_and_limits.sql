-- Declared env of a command, and resource limits of commands and runs.
ALTER TABLE commands ADD COLUMN env jsonb NOT NULL DEFAULT '{}';
ALTER TABLE commands ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
ALTER TABLE runs ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
