# Everyday recipes. Each one calls the CLI or pytest; the logic lives in the etl package.
set shell := ["bash", "-cu"]

venv := ".venv/bin/"

# list the recipes
default:
    @just --list

# install the package and its test tools into .venv (the library versions CI tests)
install:
    python3 -m venv .venv
    {{venv}}pip install -q -c .ci/constraints.txt -e '.[test]'

# the main job on a generated export (no sample data needed)
demo *ARGS:
    {{venv}}etl demo {{ARGS}}

# stage, validate, transform and load an export: just run mids ../shared/data/mids
run DATASET +SOURCES:
    {{venv}}etl run {{DATASET}} {{SOURCES}}

# load a transformed run (resumes an interrupted load): just load staging/mids/<run>
load RUN *ARGS:
    {{venv}}etl load {{RUN}} {{ARGS}}

# apply the Alembic migrations (the ledger) and create the datasets' live schemas from their tables
db-upgrade *ARGS:
    {{venv}}etl db upgrade {{ARGS}}

# validate an export or a staged run (CI: writes report.json)
validate TARGET *ARGS:
    {{venv}}etl validate {{TARGET}} {{ARGS}}

# the benchmark: the real full export ($ETL_SHARED_DATA/mids_full) and 5 renamed copies of it, through the load
perf-bench *ARGS:
    {{venv}}etl bench {{ARGS}}

# the test suite (real files, no mocks)
test *ARGS:
    {{venv}}pytest {{ARGS}}

# lint, type-check and check the architecture (import-linter contracts in pyproject.toml)
lint:
    {{venv}}ruff check .
    {{venv}}mypy
    {{venv}}lint-imports

# ---- everyday commands of the original tool (each calls the CLI)

# import an export: stage, validate, transform, load (just import mids ../shared/data/mids)
import DATASET +SOURCES:
    {{venv}}etl run {{DATASET}} {{SOURCES}}

# resume an interrupted import: load the staged run again (finished steps are kept)
import-resume RUN *ARGS:
    {{venv}}etl load {{RUN}} {{ARGS}}

# is everything in order? database, migrations, Redis, staging space, last loads (exit 1 if not)
import-health *ARGS:
    {{venv}}etl health {{ARGS}}

# rows, table and index sizes, the last loads with their timings
import-stats *ARGS:
    {{venv}}etl stats {{ARGS}}

# cache hits and misses per tier and query, Redis memory and keys
cache-stats *ARGS:
    {{venv}}etl cache stats {{ARGS}}

# delete this database's keys from the shared Redis cache
cache-clear *ARGS:
    {{venv}}etl cache clear {{ARGS}}

# preload the hottest keys of a dataset after a load: just cache-warm mids
cache-warm DATASET="mids" *ARGS:
    {{venv}}etl cache warm {{DATASET}} {{ARGS}}

# refresh materialized views (concurrently) and ANALYZE
db-optimize *ARGS:
    {{venv}}etl db optimize {{ARGS}}

# read benchmark: concurrent cached readers while mids reloads (replaces the database's mids data)
bench-reads *ARGS:
    {{venv}}etl bench-reads {{ARGS}}
