"""After promotion: the check that the new champion serves what was approved, and its automatic rollback."""
