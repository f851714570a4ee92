"""The audit log: its versioned schema (``schema``), the hash-chained writer (``log``), its reading (``replay``)."""
