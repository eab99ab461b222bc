"""Alembic environment. ``imagegate db upgrade`` (and ``serve``) hand in an open connection; run from the alembic
command line (``alembic -c src/imagegate/db/alembic.ini ...``) it connects to ``sqlalchemy.url`` itself."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from imagegate.db.schema import metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
elif context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
