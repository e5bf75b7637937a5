"""UtcDateTime columns give aware UTC datetimes back on SQLite and PostgreSQL (no caller repairs them).

Bad input tried: an instant written with a +05:00 offset (SQLite would store its wall time and
lose the offset), a naive value (taken as UTC), NULL, and a date in a filter.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from sqlalchemy import Column, Integer, MetaData, Table, func, insert, select

from archive_core.db import UtcDateTime, make_engine


def test_instants_come_back_aware_in_utc(database_url):
    metadata = MetaData()
    table = Table("utc_probe", metadata, Column("id", Integer, primary_key=True), Column("at", UtcDateTime()))
    engine = make_engine(database_url)
    try:
        metadata.create_all(engine)
        plus5 = datetime(2026, 12, 1, 14, 0, tzinfo=timezone(timedelta(hours=5)))
        with engine.begin() as conn:
            conn.execute(insert(table), [{"id": 1, "at": plus5}, {"id": 2, "at": datetime(2026, 12, 1, 9, 0)},
                                         {"id": 3, "at": None}])
        with engine.connect() as conn:
            rows = dict(conn.execute(select(table.c.id, table.c.at)).all())
            later = conn.scalar(select(table.c.id).where(table.c.at > datetime(2026, 12, 1, 8, 30, tzinfo=timezone.utc))
                                .order_by(table.c.id))
            since_day = conn.scalar(select(func.count()).where(table.c.at >= date(2026, 12, 1)))
        assert rows[1] == datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc) and rows[1].utcoffset() == timedelta(0)
        assert rows[2] == datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc) and rows[2].tzinfo is not None
        assert rows[3] is None
        assert later == 1   # compared as instants: 09:00 UTC is after 08:30 UTC
        assert since_day == 2   # a date in a filter is passed through, not taken for an instant
    finally:
        metadata.drop_all(engine)
        engine.dispose()
