"""Markers shared by test modules."""

import pytest

# Tests that make several Ray runs of tiny models: a hang guard, not a speed check (on a 2-core machine loaded by a
# training run beside the suite one took more than the default 300 s; 47-120 s idle).
SEVERAL_RAY_RUNS = pytest.mark.timeout(600)
