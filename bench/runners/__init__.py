"""Runners execute a run's units somewhere other than this process's request engine (``runner.kind``)."""
