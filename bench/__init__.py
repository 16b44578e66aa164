"""runvisor's benchmark, run from the repository root as `python -m bench` (bench/README.md).

It starts its own node (with embedded PostgreSQL and Valkey, or the servers given), measures
each figure of issue 8's table next to the raw limit measured in the same run, prints them with
their ratio and target, and writes them into docs/benchmarks.md. One module per benchmark
(b1_short_runs.py ... b5_stop.py); runner.py sets up, runs them and cleans up; report.py turns
figures into the table.
"""
