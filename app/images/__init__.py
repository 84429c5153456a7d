"""Upload once, try many: stored images (store.py), their routes (routes.py) and how a try-on
names them instead of sending the files again (resolve.py); the README's "Upload once, try many"."""
