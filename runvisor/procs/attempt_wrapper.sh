# Attempt wrapper, run by dash as:
#   /bin/sh attempt_wrapper.sh STATUS_PATH CODE CWD SETPRIV UID GID   (the last three may be "")
# It runs CODE under bash as a foreground child (not exec) and records bash's exit status in
# STATUS_PATH, because after a service restart (adoption) nobody can waitpid() the attempt.
#
# A no-op *handler*, not '' (ignore): the stop's SIGTERM to the process group must not kill the
# wrapper before it records the status, and unlike an ignored signal a handler is reset to the
# default in children, so the user's bash starts with default dispositions.
trap : TERM INT HUP QUIT
# dash prints "Killed"/"Terminated" for a signalled child on its own stderr: keep that out of the
# user's output by giving the wrapper /dev/null and only bash the real stderr (kept on fd 3).
exec 3>&2 2>/dev/null
# The service puts this process in the attempt's cgroup and sets its resource limits, then
# writes "go" on fd 4. Anything else (it failed, or died meanwhile): run nothing.
IFS= read -r gate <&4 || gate=
exec 4<&-
[ "$gate" = go ] || exit 125
# The subshell applies the redirections in the child; `--` lets CODE start with a dash. With a
# run user, setpriv switches uid and gid, clears supplementary groups and sets no_new_privs
# (no setuid program can raise them again) right before bash: only the user's code runs as it.
{ [ -z "$3" ] || { cd -- "$3" 2>&3 && unset OLDPWD; }; } &&
  if [ -n "$4" ]; then
    (exec 2>&3 3>&-; exec "$4" --reuid="$5" --regid="$6" --clear-groups --no-new-privs \
      -- /bin/bash -c -- "$2")
  else
    (exec 2>&3 3>&-; exec /bin/bash -c -- "$2")
  fi
s=$?
# Written in place, not to a temporary file renamed (a fork and exec of mv: a third of the
# wrapper's cost): the service reads it only once this process is gone, when the write is
# complete or, if the wrapper was killed first, the file is missing or empty (no status).
printf '%s\n' "$s" >"$1"
exit "$s"
