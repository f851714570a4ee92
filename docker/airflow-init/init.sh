#!/usr/bin/env bash
# One-shot set-up, run by the `airflow-init` service of docker-compose.yaml on every `docker compose up`
# before any other Airflow component starts (they wait for it to complete successfully). Each step is
# idempotent. Runs as root (uid 0) only to hand the shared volumes to AIRFLOW_UID at the end.
#
# Environment (from docker-compose.yaml): the Airflow settings shared by all components, plus
#   AIRFLOW_CONN_PROMOTION_DB_OWNER    the owner role of the promotion database (only this service has it)
#   MLFLOW_AUTH_ADMIN_PASSWORD         the MLflow admin (`admin`), who creates the accounts
#   MLFLOW_TRACKING_USERNAME/PASSWORD  the pipeline's service account, as the workers use it
#   MLFLOW_READER_PASSWORD             the api-server's read-only MLflow account (the Model promotion page)
#   PROMOTION_WEBHOOK_URL/SECRET       where MLflow posts registry events, and the secret it signs them with
#   AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE  the Airflow users' passwords (airflow-auth volume)
set -euo pipefail
cd /opt/airflow

echo "airflow-init: Airflow $(/entrypoint airflow version)"

echo "airflow-init: migrating the Airflow metadata database"
/entrypoint airflow db migrate

# As promotion_owner (connection promotion_db_owner): creates or upgrades the audit log tables, and grants
# the application role the workers log in as INSERT + SELECT on them, nothing more, and the reader role the
# api-server's Model promotion page reads with SELECT only; on the prediction log, the serving role INSERT only.
echo "airflow-init: migrating the audit log schema"
python -m include.promotion.audit.schema upgrade --owner-conn promotion_db_owner --app-role promotion_app \
    --reader-role promotion_reader --serving-role promotion_serving

if [[ "${PROMOTION_SEED_DEMO_DATA:-true}" == "true" ]]; then
    echo "airflow-init: demo data for the demo model"
    python /opt/airflow/airflow-init/seed_demo_data.py --owner-conn promotion_db_owner --app-role promotion_app
fi

# The Airflow users' passwords, kept in the passwords file and printed the first time. Airflow's own code
# writes them here, before the api-server's first start would, so that MLflow gets the same ones.
echo "airflow-init: Airflow users' passwords"
# The pipeline's read-only Airflow account (the approval gate reads Airflow's event log with it: who cleared a
# run): its password comes from .env, as the workers' connection promotion_airflow_api holds it.
python - <<'PYTHON'
import json, os, pathlib
path = pathlib.Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
current = json.loads(path.read_text() or "{}") if path.exists() else {}
current["event-log-reader"] = os.environ["PROMOTION_AIRFLOW_API_PASSWORD"]
path.write_text(json.dumps(current))
PYTHON
python -c 'from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager as M; M().init()'

# Under the FAB auth manager (docker-compose.fab.yaml): the same users with the same passwords as FAB users, the
# base roles, one role per governed model with its team as members, and the on-call role (docs/security.md).
# Idempotent; a model added later needs its role: `docker compose run --rm airflow-init` again.
if [[ "${AIRFLOW__CORE__AUTH_MANAGER:-}" == *FabAuthManager ]]; then
    echo "airflow-init: FAB users and per-model roles"
    python -m include.promotion.fab_accounts --simple-auth-manager-users
fi

# Signed in as the MLflow admin: the pipeline's service account (the only account that writes governed
# models), a read account for each Airflow user with their Airflow password, and the api-server's `promotion-reader`.
echo "airflow-init: MLflow accounts"
python -m include.promotion.registry.accounts bootstrap --people-file "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE}" \
    --not-people event-log-reader

# As the service account (an MLflow admin: webhooks are admin-only): MLflow posts registry events to the
# api-server, which wakes the DAG model_registry_watch for the model at once. Created, or updated in place.
echo "airflow-init: MLflow webhook"
python -m include.promotion.watch.mlflow_webhook register

echo "airflow-init: handing the shared volumes to uid ${AIRFLOW_UID:-50000} (group 0)"
mkdir -p /opt/airflow/logs /opt/airflow/auth
chown -R "${AIRFLOW_UID:-50000}:0" /opt/airflow/logs /opt/airflow/auth
chmod 0770 /opt/airflow/auth
find /opt/airflow/auth -type f -exec chmod 0600 {} +
