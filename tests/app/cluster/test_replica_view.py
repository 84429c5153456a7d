"""An ingress replica's view of the try-on replicas across a Redis outage and a replica's death.

The view's own rules, driven by hand: the reports it is given, Redis failures, and a clock.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError

from app.cluster.redis_client import connect
from app.cluster.registry import REPORT_TTL_S, ReplicaRegistry, ReplicaReport, ReplicaView


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def report(replica_id: str) -> ReplicaReport:
    return ReplicaReport(
        id=replica_id, status="ok", error=None, inferences_served=0, busy=False, request_id=None,
        pid=1, size=[96, 128], output_size=[96, 128], device="cpu", dtype="float32",
        model_identity="tiny",
    )  # fmt: skip


def new_view(clock: Clock) -> ReplicaView:
    # Never connects: the test hands the view what a read of Redis would have returned.
    return ReplicaView(ReplicaRegistry(connect("redis://127.0.0.1:1/0")), clock)


def ids(view: ReplicaView) -> list[str]:
    return [replica["id"] for replica in view.replicas]


def test_a_redis_restart_that_lost_the_reports_does_not_empty_the_view() -> None:
    clock = Clock()
    view = new_view(clock)
    view.read([report("b"), report("a")])
    assert ids(view) == ["a", "b"] and view.redis_status == "ok"
    clock.now += 30
    view.unreadable(RedisConnectionError("Connection refused"))
    assert ids(view) == ["a", "b"] and view.redis_status.startswith("unreachable")
    clock.now += 30
    view.read([])  # back, the reports expired meanwhile: the replicas report again in a moment
    assert ids(view) == ["a", "b"] and view.redis_status == "ok"
    clock.now += 1
    view.read([report("a")])
    clock.now += REPORT_TTL_S
    view.read([report("a")])  # "b" said nothing since the outage: it is gone
    assert ids(view) == ["a"]


def test_a_dead_replica_leaves_the_view_once_its_report_is_no_longer_read() -> None:
    clock = Clock()
    view = new_view(clock)
    view.read([report("a"), report("b")])
    clock.now += REPORT_TTL_S
    view.read([report("a")])
    assert ids(view) == ["a", "b"]
    clock.now += 0.5
    view.read([report("a"), report("c")])  # its replacement
    assert ids(view) == ["a", "c"]
