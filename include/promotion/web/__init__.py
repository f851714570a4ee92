"""The Model promotion page: the FastAPI app the plugin mounts (``app``), its routes and login (``routes``), the reports
(``report``, from ``registry_reads``, the audit log's queries and ``runs``, shaped by ``shaping`` into ``views``), the
limits on what people send (``limits``), and the HTML (``pages``: ``templates/`` and ``static/``)."""
