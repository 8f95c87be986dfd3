"""The data-plane benchmark harness behind `bench/dataplane.py` (see that file's docstring)."""
