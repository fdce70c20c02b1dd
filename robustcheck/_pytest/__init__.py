"""Internals of the pytest plugin (:mod:`robustcheck.pytest_plugin`): the session state and the failure text."""
