"""Moves the clock of a Python child process started by the tests (servers, CLI runs).

tests/conftest.py puts this folder on PYTHONPATH only when ARCHIVAGE_TEST_NOW is set, so that a
server process started by a test lives on the same shifted date as the test itself.
"""

import os

_when = os.environ.get("ARCHIVAGE_TEST_NOW")
if _when:
    from tests.clock.shift import travel

    travel(_when).start()
