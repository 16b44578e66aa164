"""Fixtures live in fix_*.py modules; this file only makes them visible to every test."""

pytest_plugins = ["tests.fix_stores", "tests.fix_service", "tests.fix_proxy", "tests.fix_journal"]
