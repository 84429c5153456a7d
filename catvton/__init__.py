"""CatVTON virtual try-on: the model library (no web code)."""
