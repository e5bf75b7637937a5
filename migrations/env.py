"""Alembic environment: every model of the one declarative base, SQLite in batch mode."""

from alembic import context

from archive_core.db import Base, make_engine
import archive_core.index.models  # noqa: F401
import archive_core.audit  # noqa: F401
import backoffice.models  # noqa: F401  (every back-office model)

config = context.config
url = config.get_main_option("sqlalchemy.url")


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
