"""The CatVTON try-on HTTP service."""
