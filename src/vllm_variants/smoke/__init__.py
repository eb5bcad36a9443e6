"""Smoke checks of built results (`nox -s smoke`, `invoke smoke`).

- check.py: the checks, a standalone script run by each result's own Python.
- session.py: picks the results, runs check.py in each (several at once) and
  raises SmokeFailed when a check failed.
- report.py: the table per result, smoke-report.json and the JUnit XML.

Keep this module free of imports: check.py's folder must not pull anything in.
"""
