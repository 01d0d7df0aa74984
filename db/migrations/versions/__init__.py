"""Migration scripts, named date-first so they sort."""
