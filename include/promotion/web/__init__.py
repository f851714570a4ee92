"""The Model promotion page: the FastAPI app the plugin mounts, its routes, reports and rendering."""
