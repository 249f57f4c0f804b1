"""The cli tests: a package, so that its conftest.py and test modules import each other
by relative name (tests/python/cli and tests/python/bindings each have a conftest.py)."""
