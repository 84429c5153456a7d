"""Stored images on the cluster: an image stored through one ingress replica is tried on through
another (Redis holds the fitted pixels), and the automatic mask kept by one replica's try-on
spares the masker for the next try-on through the other."""

from __future__ import annotations

from cluster_helpers import Cluster, answers_until_elsewhere
from http_helpers import FAST, image_bytes, post_parts, post_try_on

from app.cluster.headers import SERVED_BY_HEADER

IMAGES = "/api/try-on/images"


def test_an_image_stored_through_one_replica_is_tried_on_through_another(
    cluster: Cluster,
) -> None:
    stored = post_parts(f"{cluster.url}{IMAGES}", [("image", image_bytes(), "p.jpg", "image/jpeg")])
    assert stored.status_code == 201, stored.text
    owner, person_id = stored.headers[SERVED_BY_HEADER], stored.json()["imageId"]
    parts = [
        ("person_image_id", person_id.encode(), None, None),
        ("cloth_image", image_bytes((100, 100)), "c.jpg", "image/jpeg"),
        ("seed", b"-1", None, None),
        *[(name, value.encode(), None, None) for name, value in FAST.items()],
    ]
    answers = answers_until_elsewhere(lambda: post_try_on(cluster.url, parts), owner)
    assert all(answer.status_code == 200 for answer in answers), answers[-1].text
    assert "mask" in answers[0].json()["timingsMs"]  # the first try-on of the person masks it
    assert all("mask" not in answer.json()["timingsMs"] for answer in answers[1:])
    served_by = {answer.headers[SERVED_BY_HEADER] for answer in answers} | {owner}
    if len(answers) == 1:  # the mask, kept in Redis, spares the masker through either replica
        assert "mask" not in post_try_on(cluster.url, parts).json()["timingsMs"]
    assert len(served_by) == 2
