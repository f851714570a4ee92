"""Registry retention: which old versions of a model may go (``plan``, a pure function) and the deletion itself
(``apply``, under the model's lock, on record)."""
