"""What a failed Serve call means to the service: Ray's and Serve's exceptions turned into the
service's errors, the replica's own error passed through, and the metrics' name for each outcome.

Kept apart from `RemoteWorker` (app/cluster/remote_worker.py), which decides what to do about them
(a job whose replica died runs once more; a synchronous request answers 503 `worker_stopped`).
"""

from __future__ import annotations

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import DeploymentUnavailableError

from app.edge.errors import GPUOutOfMemoryError
from catvton.errors import InferenceCanceledError

REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError)


class ReplicaStopped(Exception):
    """The replica running a call died (Serve restarts it)."""


def unwrap(exc: BaseException) -> BaseException:
    """Serve's and Ray's failures -> the service's errors (or ReplicaStopped / BackPressureError,
    which the caller decides about)."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, Exception) and not isinstance(cause, RayActorError):
            return cause  # the replica's own error: 503 out of memory, 422, canceled, ...
        return ReplicaStopped(str(exc))
    if isinstance(exc, REPLICA_GONE):
        return ReplicaStopped(str(exc))
    return exc


def outcome_name(error: BaseException) -> str:
    """The `catvton_inferences_total` outcome of a failed try-on."""
    if isinstance(error, GPUOutOfMemoryError):
        return "out_of_memory"
    return "canceled" if isinstance(error, InferenceCanceledError) else "error"
