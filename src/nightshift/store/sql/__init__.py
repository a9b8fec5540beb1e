"""One SQL store for SQLite and PostgreSQL; dialect differences are capabilities, not copies."""
