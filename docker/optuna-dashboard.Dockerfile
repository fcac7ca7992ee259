# optuna-dashboard for the shared study, and the one-shot `storage-init` service that creates the study tables.
# Built by `docker compose build optuna-dashboard`. Optuna's major version must match the workers' (ftlab's
# pyproject.toml): a study's tables carry a schema version that older or newer Optuna releases refuse.
FROM python:3.11-slim

ARG OPTUNA_SPEC="optuna==5.*"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN pip install "${OPTUNA_SPEC}" "optuna-dashboard==0.21.*" "psycopg[binary]==3.2.*" "grpcio==1.*"

EXPOSE 8080
