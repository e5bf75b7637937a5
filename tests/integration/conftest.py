"""Fixtures shared by the integration tests (real DICOM peers)."""

from __future__ import annotations

import pytest
from pynetdicom import _config


@pytest.fixture
def chunked_send():
    """pynetdicom sends a file's dataset bytes from disk as they are (no decode/re-encode)."""
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = saved
