#!/usr/bin/env bash
# Creates the roles and databases of the stack on the shared PostgreSQL server:
#   airflow      owned by AIRFLOW_DB_USER   - Airflow metadata database (and Celery result backend)
#   mlflow       owned by MLFLOW_DB_USER    - MLflow tracking / model-registry backend store
#   mlflow_auth  owned by MLFLOW_DB_USER    - MLflow basic-auth users and permissions (docker/mlflow/basic_auth.ini)
#   promotion    audit log and demo data, with two roles, neither a superuser nor able to create roles or
#                databases:
#     PROMOTION_DB_OWNER_USER (promotion_owner) owns the database, its schema and tables. Only the
#         `airflow-init` service logs in as it (connection `promotion_db_owner`), to run the audit schema
#         migrations, which also grant INSERT + SELECT on the audit table to the application role.
#     PROMOTION_DB_APP_USER (promotion_app) is what the Airflow workers log in as (connection
#         `promotion_db`): it may connect, and nothing else until the migrations grant it.
#     PROMOTION_DB_READER_USER (promotion_reader) is what the api-server's Model promotion page reads the audit
#         log with (connection `promotion_db_reader`): the migrations grant it SELECT on it, nothing more.
#     PROMOTION_DB_SERVING_USER (promotion_serving) is what scoring processes log predictions with
#         (PROMOTION_PREDICTION_LOG_URL): the migrations grant it INSERT on the prediction log, nothing more.
#   Nobody else may connect to a database but its owner (and promotion_app to `promotion`), and PUBLIC may
#   not create objects in schema public of `promotion`.
#
# Run by the official postgres image from /docker-entrypoint-initdb.d, ONCE, when the data volume is
# empty. It is idempotent: after changing a password in .env, or on a volume created by an older version
# of this file, run it again (then restart the stack):
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/01-create-databases.sh
# A volume from before the owner/app split also needs, once, as the superuser in database promotion:
#   REASSIGN OWNED BY promotion TO promotion_owner;
#
# Names and passwords come from the environment set in docker-compose.yaml; values are passed to psql as
# variables and quoted with format(%I / %L), so they are never spliced into SQL text by the shell.
set -euo pipefail

run_sql() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER}" \
        --dbname "${POSTGRES_DB:-$POSTGRES_USER}" "$@"
}

# ensure_role NAME PASSWORD: a login role with the password, stripped of every administrative attribute.
ensure_role() {
    local user="$1" password="$2"
    if [[ -z "${user}" || -z "${password}" ]]; then
        echo "postgres-init: a role name and its password must both be set (role='${user}')" >&2
        return 1
    fi
    if [[ "${user}" == "${POSTGRES_USER}" ]]; then
        echo "postgres-init: '${user}' is the server superuser; give each consumer its own role" >&2
        return 1
    fi
    echo "postgres-init: ensuring role '${user}'"
    run_sql -v usr="${user}" -v pwd="${password}" <<'EOSQL'
SELECT format('CREATE ROLE %I', :'usr')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'usr') \gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %L',
              :'usr', :'pwd') \gexec
EOSQL
}

# ensure_database NAME OWNER: the database, owned by OWNER, which only its owner may connect to.
ensure_database() {
    local db="$1" owner="$2"
    echo "postgres-init: ensuring database '${db}' owned by '${owner}'"
    run_sql -v db="${db}" -v usr="${owner}" <<'EOSQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'usr')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'db', :'usr') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db') \gexec
EOSQL
}

ensure_role "${AIRFLOW_DB_USER:-}" "${AIRFLOW_DB_PASSWORD:-}"
ensure_database "${AIRFLOW_DB_NAME:?}" "${AIRFLOW_DB_USER}"

ensure_role "${MLFLOW_DB_USER:-}" "${MLFLOW_DB_PASSWORD:-}"
ensure_database "${MLFLOW_DB_NAME:?}" "${MLFLOW_DB_USER}"
ensure_database "${MLFLOW_AUTH_DB_NAME:?}" "${MLFLOW_DB_USER}"

ensure_role "${PROMOTION_DB_OWNER_USER:-}" "${PROMOTION_DB_OWNER_PASSWORD:-}"
ensure_role "${PROMOTION_DB_APP_USER:-}" "${PROMOTION_DB_APP_PASSWORD:-}"
ensure_role "${PROMOTION_DB_READER_USER:-}" "${PROMOTION_DB_READER_PASSWORD:-}"
ensure_role "${PROMOTION_DB_SERVING_USER:-}" "${PROMOTION_DB_SERVING_PASSWORD:-}"
ensure_database "${PROMOTION_DB_NAME:?}" "${PROMOTION_DB_OWNER_USER}"
echo "postgres-init: '${PROMOTION_DB_APP_USER}', '${PROMOTION_DB_READER_USER}' and '${PROMOTION_DB_SERVING_USER}' may connect to '${PROMOTION_DB_NAME}'; PUBLIC may not create in its schema public"
run_sql -v db="${PROMOTION_DB_NAME}" -v app="${PROMOTION_DB_APP_USER}" -v reader="${PROMOTION_DB_READER_USER}" \
    -v serving="${PROMOTION_DB_SERVING_USER}" <<'EOSQL'
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', :'db', :'app') \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', :'db', :'reader') \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', :'db', :'serving') \gexec
\connect :"db"
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
EOSQL
