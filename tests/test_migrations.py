"""The schema comes from migrations: one head, upgrade from empty, matches the models."""

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from service.db import alembic_config
from service.tables import Base


def test_single_migration_head():
    assert len(ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_heads()) == 1


def test_upgrade_from_empty_matches_the_models_and_downgrades(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    engine = create_engine(empty_database)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []
        assert set(inspect(connection).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    command.downgrade(config, "base")
    with engine.connect() as connection:
        assert inspect(connection).get_table_names() == ["alembic_version"]
    engine.dispose()
