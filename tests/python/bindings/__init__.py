"""The bindings tests: a package, so that its conftest.py and test modules import each other
by relative name (tests/python/bindings and tests/python/cli each have a conftest.py)."""
