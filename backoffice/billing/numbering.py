"""Gap-free numbering of invoices and credit notes, one counter per series (year).

Each function takes a Session first, flushes, never commits (the edge does)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from backoffice.billing.models import NumberCounter


def next_number(session: Session, series: str) -> int:
    """The next value of *series*, inside the caller's transaction.

    SQLite: the caller's transaction already holds the write lock (BEGIN IMMEDIATE), so reading and
    bumping the counter cannot interleave. PostgreSQL: the upsert below locks the counter row until
    commit (a second issuer waits on it, then reads the committed value: READ COMMITTED re-checks
    the conflicting row); a rollback gives the number back, so there is never a gap.

    One statement, one round trip: insert the series at 1, or bump it, and read the result back.
    """
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(NumberCounter).values(series=series, last_value=1)
    statement = statement.on_conflict_do_update(
        index_elements=[NumberCounter.series], set_={"last_value": NumberCounter.last_value + 1}
    ).returning(NumberCounter.last_value)
    value = session.execute(statement).scalar_one()
    # An instance loaded earlier in this session would show the old value: refresh it on next access.
    counter = session.identity_map.get(session.identity_key(NumberCounter, series))
    if counter is not None:
        session.expire(counter)
    return value
