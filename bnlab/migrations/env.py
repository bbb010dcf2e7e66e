"""Alembic environment: run by `bnlab.store.migrate` in code, or by the `alembic` command."""

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import make_url

from bnlab.store.db import ensure_sqlite_folder
from bnlab.store.tables import Base, UTCDateTime

# No logging.fileConfig here: called from the CLI or tests, it would silence their loggers.
config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from bnlab.settings import get_settings  # the `alembic` command line: use BNLAB_* settings

    return get_settings().database_url


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # A revision must not import bnlab types that may later change: write the plain column type.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _options(url: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "compare_type": True,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        "render_as_batch": make_url(url).get_backend_name() == "sqlite",
        "render_item": _render_item,
    }


def run_offline(url: str) -> None:
    context.configure(url=url, literal_binds=True, **_options(url))
    with context.begin_transaction():
        context.run_migrations()


def run_online(url: str) -> None:
    ensure_sqlite_folder(url)
    # Not bnlab's cached engine: batch mode on SQLite recreates tables, which must happen with
    # foreign keys off, or dropping the old table would cascade-delete its children.
    is_sqlite = make_url(url).get_backend_name() == "sqlite"
    engine = create_engine(
        url, poolclass=pool.NullPool, connect_args={"timeout": 30} if is_sqlite else {}
    )
    with engine.connect() as connection:
        context.configure(connection=connection, **_options(url))
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline(_database_url())
else:
    run_online(_database_url())
