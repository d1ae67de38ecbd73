"""Tests, in folders that mirror the packages (runtime/, train/, export/, demo/,
benchmarks/, bcd/ for the CLI end to end). The __init__.py files make each test module
a unique `tests.<folder>.test_<name>` (the same file name may appear in two folders, and
tests/runtime/ never shadows the real `runtime` package); shared fixtures and helpers
live in tests/conftest.py (`from tests.conftest import ...`)."""
