from tests.db.backends import database_url  # noqa: F401  (the per-backend fresh database fixture)
