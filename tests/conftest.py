"""Make the flat top-level modules (synctrack, metrics, data, ...) importable from the tests."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
