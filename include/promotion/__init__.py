"""Governed model promotion: the domain library behind the DAGs in ``dags/``.

Plain Python, importable and testable without a scheduler. Heavy dependencies (mlflow, sklearn,
pandas, database drivers) are imported inside the functions that need them, so DAG files can import
``include.promotion.config`` at parse time cheaply.
"""
