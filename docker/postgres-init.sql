-- Run once by the postgres image, as POSTGRES_USER, when its data volume is empty (docker-compose.yml mounts it into
-- /docker-entrypoint-initdb.d/). Two databases, both owned by POSTGRES_USER:
--   mlflow  the MLflow tracking server's backend store (runs, params, metrics, tags, model registry)
--   optuna  the Optuna study every `ftlab worker` shares
-- \gexec runs each generated statement: a database that already exists (POSTGRES_DB=optuna, say) is skipped, where a
-- plain CREATE DATABASE would abort the initialisation.
SELECT format('CREATE DATABASE %I', name)
FROM (VALUES ('mlflow'), ('optuna')) AS wanted(name)
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = wanted.name)
\gexec
