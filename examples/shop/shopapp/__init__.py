"""shopapp: a small FastAPI service of its own (models, Alembic history, ``get_db``, routes) that
creates jobrunner jobs in its own transactions and declares its own job kinds."""
