"""The audit log: its versioned schema (``schema``), the keyed chain (``chain``) and its anchor in the registry
(``anchor``), the writer (``log``), which code wrote a row (``provenance``), its reading (``replay``, ``queries``)."""
