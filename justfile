# Everyday recipes. Each one calls the CLI or pytest; the logic lives in the etl package.
set shell := ["bash", "-cu"]

venv := ".venv/bin/"

# list the recipes
default:
    @just --list

# install the package and its test tools into .venv
install:
    python3 -m venv .venv
    {{venv}}pip install -q -e '.[test]'

# the main job on a generated export (no sample data needed)
demo *ARGS:
    {{venv}}etl demo {{ARGS}}

# stage, validate, transform and load an export: just run mids ../shared/data/mids
run DATASET +SOURCES:
    {{venv}}etl run {{DATASET}} {{SOURCES}}

# load a transformed run (resumes an interrupted load): just load staging/mids/<run>
load RUN *ARGS:
    {{venv}}etl load {{RUN}} {{ARGS}}

# apply the Alembic migrations (ledger and live schemas)
db-upgrade *ARGS:
    {{venv}}etl db upgrade {{ARGS}}

# validate an export or a staged run (CI: writes report.json)
validate TARGET *ARGS:
    {{venv}}etl validate {{TARGET}} {{ARGS}}

# the benchmark: 78k and 360k entries amplified from the real sample, through the load
perf-bench *ARGS:
    {{venv}}etl bench {{ARGS}}

# the test suite (real files, no mocks)
test *ARGS:
    {{venv}}pytest {{ARGS}}

# lint and type-check
lint:
    {{venv}}ruff check .
    {{venv}}mypy
