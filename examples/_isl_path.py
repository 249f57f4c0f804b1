"""Lets the examples run from a source tree: when isl is not installed (nor on
PYTHONPATH), `import isl` after `import _isl_path` finds the module built in
build/bindings/python. Python puts a script's own folder first on sys.path, so an example
run as `examples/x.py` finds this file beside it."""
import os
import sys

try:
    import isl  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "build", "bindings", "python"))
