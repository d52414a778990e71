"""Infrastructure the stages stand on: PostgreSQL connections (:mod:`.pg`), the embedded server
(:mod:`.embedded`), the run ledger and its Alembic migrations (:mod:`.ledger`, ``migrations/``),
the Redis read cache (:mod:`.cache`) and target-table DDL (:mod:`.schema`)."""
