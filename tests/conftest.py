import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import os
import signal
import uuid

import pytest
from stepsinks import procs_with


@pytest.fixture
def marker():
    """A unique `sleep` argument; any process still carrying it is killed afterwards."""
    value = f"1000.{uuid.uuid4().int % 10**9:09d}"
    yield value
    for pid in procs_with(value):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
