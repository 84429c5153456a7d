"""The same service on Ray Serve, with Redis for what the replicas share.

The only package that imports `ray`; the app never imports it. `deployments` builds the Serve
application (a CPU ingress made by `app.main.create_app`, try-on replicas made of the same
`InferenceWorker` and `load_models` as the single process), `remote_worker` is what the ingress's
routes call instead of the local worker, `registry` is how replicas report their state, and
`__main__` starts it all on a running Ray cluster (`scripts/cluster_demo.sh` does that on one CPU).
"""
