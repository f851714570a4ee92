"""The approval gate: the Human-in-the-loop task (``gate``) and what it shows and accepts (``review``)."""
