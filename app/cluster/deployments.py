"""The Serve application: a CPU ingress made by `create_app`, try-on replicas behind it.

`build_application(settings)` is used by `python -m app.cluster` (and so by the demo and the
tests); `app_builder(args)` is the same for `serve run` / `serve deploy` with the YAML config in
this folder, whose `args` are `ClusterSettings` fields.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from redis.exceptions import RedisError

from app.cluster.headers import EdgeHeadersMiddleware
from app.cluster.redis_active import RedisActiveWork
from app.cluster.redis_client import answer_redis_down, connect
from app.cluster.redis_images import RedisImageStore
from app.cluster.redis_jobs import RedisJobStore
from app.cluster.redis_results import RedisResultCache
from app.cluster.registry import ReplicaRegistry
from app.cluster.remote_worker import RemoteWorker
from app.cluster.replica import TryOnReplica
from app.cluster.settings import ClusterSettings
from app.cluster.shared_jobs import SharedJobRunner
from app.images.store import image_retention
from app.jobs.store import job_retention
from app.main import create_app
from app.settings import Settings

# The ingress only parses HTTP and waits on replicas: many requests per replica, little CPU. Its
# own queue stays unbounded, so Serve's proxy never answers for it in plain text; the bound that
# matters is the one in front of the try-on replicas (`max_queued_requests`).
INGRESS_MAX_ONGOING_REQUESTS = 64
INGRESS_CPUS = 0.5
SHUTDOWN_MARGIN_S = 10.0  # for the ingress's last writes after its drain


@serve.ingress()
class Ingress:
    """The single process's FastAPI app, whose worker is the try-on deployment."""

    def __init__(self, try_on: DeploymentHandle, options: dict[str, Any], queue_bound: int) -> None:
        self.settings = Settings(**options)
        self.try_on = try_on
        self.queue_bound = queue_bound

    def __serve_build_asgi_app__(self) -> FastAPI:
        settings = self.settings
        assert settings.redis_url, "the cluster needs --redis-url"
        redis = connect(settings.redis_url)
        worker = RemoteWorker(
            self.try_on,
            ReplicaRegistry(redis),
            queue_capacity=self.queue_bound,
            max_queued_jobs=settings.max_queued_jobs,
        )
        store = RedisJobStore(redis, **job_retention(settings))
        cache = RedisResultCache(redis, settings.cache_bytes) if settings.cache_bytes > 0 else None
        # Stored images: any ingress replica serves a try-on naming one stored through another.
        images = RedisImageStore(redis, **image_retention(settings))
        replica_id = serve.get_replica_context().replica_id.unique_id
        active_work = (
            RedisActiveWork(redis, replica_id, settings.max_active_per_client)
            if settings.max_active_per_client
            else None
        )
        # The worker's status lists the replicas and Redis (the same /health); the job runner's
        # cancels and deletes reach the replica driving the job, whose death ends them.
        app = create_app(
            settings,
            worker,
            job_store=store,
            cache=cache,
            active_work=active_work,
            image_store=images,
            job_runner=partial(
                SharedJobRunner, redis, replica_id, drain_timeout=settings.drain_timeout
            ),
        )
        app.add_exception_handler(RedisError, answer_redis_down)
        app.add_middleware(EdgeHeadersMiddleware, served_by=replica_id)  # outermost
        return app


def build_application(settings: ClusterSettings) -> Application:
    """Bind the two deployments as `settings` says (replicas, GPUs, autoscaling, queue bound)."""
    if settings.max_replicas is not None:
        scaling: dict[str, Any] = {
            "autoscaling_config": {
                "min_replicas": settings.min_replicas or 1,
                "max_replicas": settings.max_replicas,
                # One try-on per replica at a time: scale out as soon as requests wait.
                "target_ongoing_requests": 1,
            }
        }
    else:
        scaling = {"num_replicas": settings.replicas}
    options = settings.service_options()
    try_on = serve.deployment(
        name="TryOn",
        max_ongoing_requests=1,
        max_queued_requests=settings.max_queued_requests,
        graceful_shutdown_timeout_s=settings.drain_timeout,  # the try-on it is running
        health_check_period_s=settings.health_check_period_s,
        ray_actor_options={
            "num_gpus": settings.gpus_per_replica,
            "num_cpus": settings.cpus_per_replica,
        },
        **scaling,
    )(TryOnReplica).bind(options)
    return serve.deployment(
        name="Ingress",
        num_replicas=settings.ingress_replicas,
        max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
        # Its requests, then its jobs (SharedJobRunner.drain) may finish; past it, Serve
        # kills it, and its jobs' leases end them (worker_stopped).
        graceful_shutdown_timeout_s=settings.drain_timeout + SHUTDOWN_MARGIN_S,
        ray_actor_options={"num_cpus": INGRESS_CPUS},
    )(Ingress).bind(try_on, options, settings.max_queued_requests)


def app_builder(args: dict[str, Any]) -> Application:
    """`serve run app.cluster.deployments:app_builder key=value ...` / the YAML's `args`."""
    return build_application(ClusterSettings(**args))
