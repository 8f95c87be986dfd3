"""Helpers and fixtures of the tests: processes, stacks, policies, relays."""
