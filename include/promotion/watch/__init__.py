"""The registry watch: the registry reconciled against the audit log, woken by MLflow's webhooks."""
