"""The registry's web site: server-rendered pages beside the API (``registry.web.pages``)."""
