"""The bodies of the DAGs' tasks, as plain functions; the DAG files call one per task."""
