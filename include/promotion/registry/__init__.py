"""The MLflow Model Registry as the pipeline writes it: client, service account, lifecycle moves, rollback."""
