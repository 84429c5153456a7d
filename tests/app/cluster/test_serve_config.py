"""The YAML for `serve deploy` is a valid Serve config whose args the app builder accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[3] / "app" / "cluster" / "serve_config.yaml"


def test_the_serve_config_parses_and_builds_both_deployments() -> None:
    pytest.importorskip("ray")
    from ray.serve.schema import ServeDeploySchema

    from app.cluster.deployments import app_builder

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (application,) = config.applications
    assert application.import_path == "app.cluster.deployments:app_builder"
    ingress = app_builder(application.args)._bound_deployment
    try_on = ingress.init_args[0]._bound_deployment  # becomes the handle the ingress gets
    assert (ingress.name, try_on.name) == ("Ingress", "TryOn")
    assert ingress.init_args[1]["weights_dir"] == Path("/models/catvton")
    assert try_on._deployment_config.max_ongoing_requests == 1
    assert try_on._deployment_config.autoscaling_config.max_replicas == 8
    assert try_on.ray_actor_options["num_gpus"] == 1
