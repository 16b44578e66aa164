-- GET /api/v1/audit lists the audit newest first (id DESC), filtered by action, command, actor
-- or the actor's role (the part before ':'); run_id has audit_run_idx already.
CREATE INDEX audit_action_idx ON audit (action, id);
CREATE INDEX audit_command_idx ON audit (command_id, id) WHERE command_id IS NOT NULL;
CREATE INDEX audit_actor_idx ON audit (actor, id);
CREATE INDEX audit_role_idx ON audit (split_part(actor, ':', 1), id);
