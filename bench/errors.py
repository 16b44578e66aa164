"""How a bench run can go wrong: the service misbehaved (exit 1), or the bench itself could not
finish (exit 2)."""


class Misbehaved(Exception):
    """The service did something wrong, not merely slowly: a run that did not end as it should,
    output bytes missing, a process left behind, the node dying."""


class BenchFailed(Exception):
    """The bench could not set up or go on (no server, a tool missing): nothing was measured."""
