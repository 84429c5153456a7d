"""The HTTP edge: errors and their envelope, request ids and context, clients, schemas,
the dependencies routes ask for, and how the server stops."""
