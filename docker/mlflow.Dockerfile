# MLflow tracking server + model registry for docker-compose.yaml (service `mlflow`).
# Build context: docker/. The pins must match requirements.txt / constraints.txt (tests/unit/test_compose.py
# checks them).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN pip install "mlflow==3.17.2" "psycopg2-binary==2.9.13"

# Run unprivileged. The artifact directory is created here so that the named volume mounted on it
# starts out owned by this user.
RUN useradd --create-home --uid 1000 --user-group mlflow \
    && mkdir -p /mlflow/artifacts \
    && chown -R mlflow:mlflow /mlflow
USER mlflow
WORKDIR /mlflow

EXPOSE 5000
