"""Try-on jobs: the store interface, the runner between the routes and the worker, the
routes and their server-sent events."""
