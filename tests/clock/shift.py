"""The whole suite on another date: ``ARCHIVAGE_TEST_NOW=2032-02-29T10:00:00 make test``.

A test that passes only on the day it was written (a hold dated by the real clock, a sweep on a
fixed day) fails when the suite runs years ahead or on a 29 February. Time keeps ticking from the
given instant; monotonic clocks (timeouts) are not touched.
"""

from __future__ import annotations

from datetime import datetime, timezone

import time_machine


def instant(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def travel(text: str) -> time_machine.travel:
    return time_machine.travel(instant(text), tick=True)
