"""Fixtures shared by the integration tests (real DICOM peers)."""

from __future__ import annotations

import gc
import warnings

import pytest
from pynetdicom import _config


@pytest.fixture(autouse=True)
def _collect_left_sockets():
    """pynetdicom leaves the socket of an association that was refused, aborted or killed open in
    this (the client's) process. Collected at the end of the test that made it, it cannot fail a
    later test at whatever moment the garbage collector runs: it did, in test_worklist_rules,
    test_object_storage and (on CI) a worklist test after the worker tests. Sockets of the
    archive itself are not concerned: its processes are children, or closed by its own tests."""
    yield
    _collect()


@pytest.fixture(autouse=True, scope="module")
def _collect_left_sockets_of_module_fixtures():
    """The same, after the module's own fixtures (servers shared by a module) are torn down: every object
    the tests' collections set aside goes back to the collector first."""
    yield
    gc.unfreeze()
    _collect()


def _collect() -> None:
    """Collect what the test left, then set aside (``gc.freeze``) everything still alive: the next
    collection looks only at what the next test makes. A full collection of this process's heap took
    0.8 s by the end of a run (514 s of teardown over the integration tests); what the test made alone
    takes milliseconds. Objects set aside and freed later are collected at the module's end."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    gc.freeze()


@pytest.fixture
def chunked_send():
    """pynetdicom sends a file's dataset bytes from disk as they are (no decode/re-encode)."""
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = saved


@pytest.fixture
def server(database_url, tmp_path):
    """The archive and its DICOM server (`archive_server`), on SQLite and on PostgreSQL; a test module may
    define its own `server` (test_billing_numbering's is the web process)."""
    from tests.helpers import archive_server

    instance = tmp_path / "instance"
    instance.mkdir()
    with archive_server(instance, DATABASE_URL=database_url) as (archive, running):
        yield archive, running
