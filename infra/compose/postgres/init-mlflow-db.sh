#!/bin/sh
# Runs once, when the postgres image initialises an empty data volume (the first database,
# `prefect`, comes from POSTGRES_DB). MLflow gets a database of its own in the same
# instance: the two schemas migrate independently and never share tables.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE DATABASE mlflow OWNER "$POSTGRES_USER";
SQL
