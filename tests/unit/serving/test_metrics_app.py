"""The separate metrics app's arguments are checked like an experiment's: a ConfigError that
names the field, before anything is deployed."""

from __future__ import annotations

import pytest

from serve_ab.config.experiment import ConfigError
from serve_ab.serving.app import build_metrics_app


@pytest.mark.parametrize("args, field", [({}, "app"), ({"app": ""}, "app"), ({"app": "x", "extra": 1}, "extra"),
                                         ({"app": "x", "num_cpus": -1}, "num_cpus")])
def test_bad_arguments_name_the_field(args, field):
    with pytest.raises(ConfigError, match=field) as raised:
        build_metrics_app(args)
    assert "metrics app" in str(raised.value)


def test_a_misspelt_key_is_answered_with_the_one_meant():
    # serve run's own check, as serve-ab validate's: the nearest key and the valid ones.
    with pytest.raises(ConfigError) as raised:
        build_metrics_app({"ap": "digits"})
    assert "ap: unknown key (got 'digits'); did you mean 'app'? valid keys: app, num_cpus" in str(raised.value)


def test_good_arguments_bind_one_deployment(monkeypatch):
    monkeypatch.delenv("RAY_SERVE_METRICS_EXPORT_INTERVAL_MS", raising=False)
    app = build_metrics_app({"app": "digits"})
    assert type(app).__name__ == "Application"
    # Serve's metrics moved to Ray once a second, as in the experiment's own deployments.
    options = app._bound_deployment.ray_actor_options
    assert options["runtime_env"] == {"env_vars": {"RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000"}}
