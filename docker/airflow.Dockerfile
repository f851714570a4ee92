# Airflow image for the team deployment in docker-compose.yaml.
# Build context: the repository root (only requirements.txt and client/ are sent, see airflow.Dockerfile.dockerignore).
#
# The base tag must match the `apache-airflow==` pin in requirements.txt (tests/unit/test_compose.py checks
# it). DAGs, plugins and include/ are bind-mounted by docker-compose.yaml, not baked in.
FROM apache/airflow:3.3.2-python3.11

# requirements.txt names the serving client as ./client: both are copied side by side and pip runs beside them
# (owned by the image's user: pip builds the client in its folder).
COPY --chown=airflow:0 requirements.txt /opt/promotion/requirements.txt
COPY --chown=airflow:0 client/ /opt/promotion/client/
WORKDIR /opt/promotion
# Pinning apache-airflow to the image's own version (AIRFLOW_VERSION is set by the base image) makes pip
# fail instead of silently up- or downgrading Airflow if requirements.txt ever disagrees with the tag.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r requirements.txt
WORKDIR /opt/airflow
