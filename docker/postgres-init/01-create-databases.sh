#!/usr/bin/env bash
# Creates one role and one database per consumer on the shared PostgreSQL server:
#   airflow   - Airflow metadata database (and Celery result backend)
#   mlflow    - MLflow tracking / model-registry backend store
#   promotion - promotion audit log and demo training data (connection id `promotion_db`)
#
# Run by the official postgres image from /docker-entrypoint-initdb.d, ONCE, when the data volume is
# empty. Changing a password in .env later does not change it here: run
#   ALTER ROLE <user> PASSWORD '<new>';
# (or drop the `postgres-db-volume` volume) as well.
#
# Names and passwords come from the environment set in docker-compose.yaml; values are passed to psql as
# variables and quoted with format(%I / %L), so they are never spliced into SQL text by the shell.
set -euo pipefail

create_role_and_database() {
    local db="$1" user="$2" password="$3"
    if [[ -z "${db}" || -z "${user}" || -z "${password}" ]]; then
        echo "postgres-init: database name, user and password must all be set (db='${db}', user='${user}')" >&2
        return 1
    fi
    if [[ "${user}" == "${POSTGRES_USER}" ]]; then
        echo "postgres-init: '${user}' is the server superuser; give ${db} its own user" >&2
        return 1
    fi
    echo "postgres-init: ensuring role '${user}' and database '${db}'"
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER}" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
        -v db="${db}" -v usr="${user}" -v pwd="${password}" <<'EOSQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'usr', :'pwd')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'usr') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'usr', :'pwd') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'usr')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'db', :'usr') \gexec
-- Only the owner (and superusers) may connect: the three consumers cannot read each other's data.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db') \gexec
EOSQL
}

create_role_and_database "${AIRFLOW_DB_NAME:-}" "${AIRFLOW_DB_USER:-}" "${AIRFLOW_DB_PASSWORD:-}"
create_role_and_database "${MLFLOW_DB_NAME:-}" "${MLFLOW_DB_USER:-}" "${MLFLOW_DB_PASSWORD:-}"
create_role_and_database "${PROMOTION_DB_NAME:-}" "${PROMOTION_DB_USER:-}" "${PROMOTION_DB_PASSWORD:-}"
