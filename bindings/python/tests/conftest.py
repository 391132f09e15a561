"""Fixtures of the kronfac test suite."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    # A fixed seed per test: failures reproduce.
    return np.random.default_rng(20231124)
