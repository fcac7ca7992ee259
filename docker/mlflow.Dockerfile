# The MLflow tracking server of docker-compose.yml: MLflow 3.17 (the version ftlab is tested with) on PostgreSQL.
# Built by `docker compose build mlflow`; the command (flags) lives in docker-compose.yml.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN pip install "mlflow==3.17.*" "psycopg[binary]==3.2.*"

# Artifacts proxied by the server (--serve-artifacts) land here; docker-compose.yml mounts a volume on it.
RUN mkdir /mlartifacts
EXPOSE 5000
