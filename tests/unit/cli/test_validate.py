"""``serve-ab validate``: files that are not config text are reported, one by one, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from serve_ab.cli import command as cli

REPO_ROOT = Path(__file__).resolve().parents[3]
GOOD = REPO_ROOT / "configs" / "ab.yaml"


def test_a_binary_file_and_a_directory_are_reported_and_the_other_files_still_checked(tmp_path, capsys):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage\x81")
    folder = tmp_path / "adir.yaml"
    folder.mkdir()
    code = cli.main(["validate", "--no-check-files", str(binary), str(folder), str(GOOD)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{binary}: 1 error\n  - {binary}: not a text file (byte 0 is not UTF-8)" in out
    assert f"{folder}: 1 error\n  - {folder}: is a directory; give a config file (.yaml)" in out
    assert f"{GOOD}: ok" in out  # checked after the two that failed


def test_an_unreadable_file_is_reported(tmp_path, capsys, monkeypatch):
    secret = tmp_path / "secret.yaml"
    secret.write_text("model: x")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", refuse)
    assert cli.main(["validate", "--no-check-files", str(secret)]) == 1
    assert f"  - {secret}: cannot be read: Permission denied" in capsys.readouterr().out


def test_a_surprise_in_one_file_is_reported_and_the_rest_still_checked(tmp_path, capsys, monkeypatch):
    first = tmp_path / "first.yaml"
    first.write_text("model: x")
    real = cli.check_file

    def check(path, check_files=True, load_models=False, **more):
        if path == first:
            raise RecursionError("maximum recursion depth exceeded")
        return real(path, check_files, load_models, **more)

    monkeypatch.setattr(cli, "check_file", check)
    assert cli.main(["validate", "--no-check-files", str(first), str(GOOD)]) == 1
    out = capsys.readouterr().out
    assert f"  - {first}: could not be checked (RecursionError: maximum recursion depth exceeded)" in out
    assert f"{GOOD}: ok" in out


def test_a_python_class_is_imported_from_the_app_dir_as_serve_run_does(tmp_path, capsys, monkeypatch):
    import yaml

    package = tmp_path / "mymodels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "echo.py").write_text(
        "import numpy as np\n"
        "class Echo:\n"
        "    def load(self, path, device):\n        pass\n"
        "    def predict(self, batch):\n        return np.asarray(batch, dtype=np.float32)\n")
    config = yaml.safe_load(GOOD.read_text())
    config["applications"][0]["args"]["versions"][1] = {"name": "v2", "backend": "python",
                                                        "class": "mymodels.echo:Echo"}
    path = tmp_path / "py.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(REPO_ROOT)  # the model files resolve from here; the class is not importable from here
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli.main(["validate", str(path)]) == 1
    assert "versions.1.class: cannot import module 'mymodels.echo'" in capsys.readouterr().out
    assert cli.main(["validate", "--app-dir", str(tmp_path), str(path)]) == 0, capsys.readouterr().out
    # Echo says no input_spec and the version no inputs: it would fail to load, so validate warns.
    assert ("applications.0.args.versions.1: class mymodels.echo:Echo has no input_spec attribute and the "
            "version no inputs:; unless its __init__ or load() sets self.input_spec, it will fail to load") \
        in capsys.readouterr().out
    config["applications"][0]["args"]["versions"][1]["inputs"] = [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["validate", "--app-dir", str(tmp_path), str(path)]) == 0
    assert "input_spec" not in capsys.readouterr().out  # declared on the version: nothing to say
    assert cli.main(["validate", "--app-dir", str(tmp_path / "nope"), str(path)]) == 2
    assert "--app-dir" in capsys.readouterr().err


def test_keys_ray_serve_would_ignore_are_named_with_the_nearest_key(tmp_path, capsys):
    """Ray Serve's schema ignores unknown keys: a misspelt http_options leaves the app on port
    8000 without a word. A warning, not an error: Ray keeps them on purpose, so that an older
    Serve reads a newer one's file."""
    import ray
    import yaml

    config = yaml.safe_load(GOOD.read_text())
    config["http_optons"] = config.pop("http_options")
    config["grpc_options"]["prot"] = 9001
    app = config["applications"][0]
    app["route_prefx"] = "/x"
    app["deployments"] = [{"name": "Router", "ray_actor_options": {"num_cpu": 0.5},
                           "user_config": {"anything": 1}, "autoscaling_config": {"min_replicas": 1}}]
    path = tmp_path / "typos.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["validate", "--no-check-files", str(path)]) == 0
    out = capsys.readouterr().out
    for where, meant in (("http_optons", "http_options"), ("grpc_options.prot", "port"),
                         ("applications.0.route_prefx", "route_prefix"),
                         ("applications.0.deployments.0.ray_actor_options.num_cpu", "num_cpus")):
        assert (f"  warning: {where}: Ray Serve {ray.__version__} has no such key and ignores it, so it has no "
                f"effect here (did you mean {meant}?)") in out, out
    assert out.count("has no such key") == 4
    # Where Ray refuses unknown keys itself (logging_config), its error names the key, and the
    # nearest one Ray's schema has.
    config["logging_config"] = {"log_levle": "DEBUG"}
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["validate", "--no-check-files", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.count("log_levle") == 1 and "logging_config.log_levle: unknown key (got 'DEBUG'); did you mean 'log_level'?" in out
    for shipped in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        assert cli.main(["validate", "--no-check-files", str(shipped)]) == 0, capsys.readouterr().out
        assert "has no such key" not in capsys.readouterr().out


def test_validate_leaves_the_callers_import_path_as_it_was(tmp_path):
    before = list(sys.path)
    for _ in range(3):
        cli.main(["validate", "--no-check-files", "--app-dir", str(tmp_path), str(GOOD)])
    assert sys.path == before


def test_a_class_rays_schema_cannot_import_is_an_error_not_a_bug(tmp_path, capsys):
    import yaml

    config = yaml.safe_load(GOOD.read_text())
    config["applications"][0]["deployments"] = [
        {"name": "Router", "request_router_config": {"request_router_class": "no_such_module:Router"}}]
    path = tmp_path / "router_class.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["validate", "--no-check-files", str(path)]) == 1
    out = capsys.readouterr().out
    assert "could not import a class this file names" in out and "this is a bug" not in out, out


def test_every_missing_file_is_named_in_one_run(tmp_path, capsys, monkeypatch):
    import yaml

    config = yaml.safe_load((REPO_ROOT / "configs" / "blue_green.yaml").read_text())
    args = config["applications"][0]["args"]
    args["versions"][0]["path"] = str(tmp_path / "v1.onnx")
    args.setdefault("control", {})["tokens_file"] = str(tmp_path / "tokens.yaml")
    args["rollout"]["blue_green"]["validation_samples"] = str(tmp_path / "samples.json")
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(REPO_ROOT)  # v2's model resolves here
    assert cli.main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}: 3 errors" in out
    for field in ("versions.0.path", "control.tokens_file", "rollout.blue_green.validation_samples"):
        assert f"  - applications.0.args.{field}: no " in out, out


def test_a_path_no_file_system_takes_is_named_by_its_field(tmp_path, capsys):
    import yaml

    config = yaml.safe_load(GOOD.read_text())
    args = config["applications"][0]["args"]
    args["versions"][0]["path"] = "models/digits/v1\x00.onnx"
    args.setdefault("controller", {})["state_path"] = "state/" + "s" * 300 + ".sqlite"
    path = tmp_path / "paths.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "versions.0.path: holds a NUL byte, which no file name can (got 'models/digits/v1\\x00.onnx')" in out
    assert "controller.state_path: a name in it is over 255 bytes" in out and "this is a bug" not in out


def test_a_path_too_long_for_the_file_system_is_named_by_its_field_not_a_crash(tmp_path, capsys):
    """A long first name (the file system answers ENAMETOOLONG before ENOENT) or a path over
    PATH_MAX made validate (and the app's build) raise OSError: "this is a bug in serve-ab validate"."""
    import yaml

    config = yaml.safe_load((REPO_ROOT / "configs" / "blue_green.yaml").read_text())
    args = config["applications"][0]["args"]
    args["controller"] = {"state_path": "s" * 300}
    args["analysis"] = {"records": {"path": "r" * 300 + "/runs.sqlite"}}
    args["versions"][0]["path"] = "d/" * 2100 + "model.onnx"  # 4,210 bytes, names of one byte
    args["rollout"]["blue_green"]["validation_samples"] = "v/" * 2100 + "samples.npz"
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "this is a bug" not in out, out
    assert "  - applications.0.args.controller.state_path: a name in it is over 255 bytes" in out, out
    assert "  - applications.0.args.analysis.records.path: a name in it is over 255 bytes" in out, out
    for field in ("versions.0.path", "rollout.blue_green.validation_samples"):
        assert f"  - applications.0.args.{field}: it is " in out and "over the 4,095 a path may be" in out, out


def test_two_apps_of_one_file_sharing_a_model_and_its_state_store_are_refused(tmp_path, capsys):
    import yaml

    app = yaml.safe_load(GOOD.read_text())["applications"][0]
    second = dict(app, name="second", route_prefix="/second")
    shared = tmp_path / "shared.yaml"
    shared.write_text(yaml.safe_dump({"applications": [app, second]}))
    assert cli.main(["validate", "--no-check-files", str(shared)]) == 1
    model = app["args"]["model"]
    assert (f"  - applications.1.args.model: {model!r} is also applications.0.args.model, and both keep "
            "their state in controller.state_path '.serve-ab/state.sqlite': the two apps would resume and "
            "overwrite each other's rollout") in capsys.readouterr().out
    # Its own state file (or another model name) keeps them apart.
    own = dict(second, args=dict(app["args"], controller={"state_path": str(tmp_path / "second.sqlite")}))
    apart = tmp_path / "apart.yaml"
    apart.write_text(yaml.safe_dump({"applications": [app, own]}))
    assert cli.main(["validate", "--no-check-files", str(apart)]) == 0


def test_a_promql_gate_not_selecting_its_app_beside_another_app_of_its_model_is_warned_of(tmp_path, capsys):
    """Live (multi47): beside an A/B app of model digits, a canary's promql gate selecting
    serve_ab_requests_total{model="digits", version="v2"} read 102 requests/s where the canary's
    v2 served 16: the rest were the A/B app's. Prometheus tells them apart by application only."""
    import yaml

    ab = yaml.safe_load((REPO_ROOT / "configs" / "ab.yaml").read_text())["applications"][0]
    canary = yaml.safe_load((REPO_ROOT / "configs" / "canary_promql.yaml").read_text())["applications"][0]
    canary["route_prefix"] = "/canary"
    canary["args"]["controller"] = {"state_path": str(tmp_path / "canary.sqlite")}
    gate = canary["args"]["rollout"]["gates"][2]
    assert gate["metric"] == "promql" and 'application="{{app}}"' in gate["query"]  # as shipped: its own app
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({"applications": [ab, canary]}))
    assert cli.main(["validate", "--no-check-files", str(path)]) == 0
    assert "warning" not in capsys.readouterr().out
    gate["query"] = gate["query"].replace('application="{{app}}"', 'model="{{model}}"')
    path.write_text(yaml.safe_dump({"applications": [ab, canary]}))
    assert cli.main(["validate", "--no-check-files", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("  warning: applications.1.args.rollout.gates.2.query: promql[p95_latency_s] does not select by "
            "application, and applications.0.args serves model 'digits' too") in out, out
    # Alone, the app's series are the model's: nothing to warn of.
    path.write_text(yaml.safe_dump({"applications": [canary]}))
    assert cli.main(["validate", "--no-check-files", str(path)]) == 0
    assert "does not select by application" not in capsys.readouterr().out


def test_a_serve_file_without_applications_is_named_as_such_not_read_as_an_experiment(tmp_path, capsys):
    import yaml

    app = yaml.safe_load(GOOD.read_text())["applications"][0]
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump(app))  # import_path, args... at the top level
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"aplications": [app]}))
    assert cli.main(["validate", "--no-check-files", str(flat), str(typo)]) == 1
    out = capsys.readouterr().out
    assert f"  - {flat}: import_path at the top level: Ray Serve's config file lists its apps under applications:" in out
    assert f"  - {typo}: 'aplications' at the top level: did you mean applications:" in out
    assert "field required" not in out


def test_a_canary_step_that_lowers_the_weight_is_warned_about(tmp_path, capsys):
    import yaml

    serve_file = yaml.safe_load((REPO_ROOT / "configs" / "canary.yaml").read_text())
    steps = serve_file["applications"][0]["args"]["rollout"]["steps"]
    steps[:] = [{"set_weight": 50}, {"pause": {"duration": "60s"}}, {"set_weight": 20}, {"set_weight": 100}]
    lowered = tmp_path / "lowered.yaml"
    lowered.write_text(yaml.safe_dump(serve_file))
    assert cli.main(["validate", "--no-check-files", str(lowered)]) == 0  # advice, not an error
    out = capsys.readouterr().out
    assert "warning: applications.0.args.rollout.steps[2]: set_weight 20 after 50 sends the users of 30% of" in out
    assert out.count("set_weight") == 1  # the steps that only raise it are not warned about


def test_unset_environment_variables_of_hooks_are_warned_about_by_field_and_name(tmp_path, capsys, monkeypatch):
    # Found only mid-rollout before: a gate held, a confirm step waited, events were lost.
    import yaml

    for variable in ("AUDIT_OPS_URL", "AUDIT_OPS_TOKEN", "AUDIT_CHECKS_TOKEN", "AUDIT_APPROVALS_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AUDIT_SET_TOKEN", "s3cret-value")
    serve_file = yaml.safe_load((REPO_ROOT / "configs" / "canary.yaml").read_text())
    args = serve_file["applications"][0]["args"]
    args["notifications"] = [{"type": "slack", "url_from_env": "AUDIT_OPS_URL",
                              "headers_from_env": {"Authorization": "AUDIT_OPS_TOKEN", "X-Set": "AUDIT_SET_TOKEN"}}]
    args["rollout"]["gates"] = [{"metric": "webhook", "url": "http://checks:8080/canary",
                                 "headers_from_env": {"Authorization": "AUDIT_CHECKS_TOKEN"}}]
    args["rollout"]["steps"] = [{"set_weight": 20}, {"confirm": {"url_from_env": "AUDIT_APPROVALS_URL"}},
                                {"set_weight": 100}]
    path = tmp_path / "hooks.yaml"
    path.write_text(yaml.safe_dump(serve_file))
    assert cli.main(["validate", "--no-check-files", str(path)]) == 0  # advice: it may be set where the app runs
    out = capsys.readouterr().out
    where = "warning: applications.0.args."
    for field, variable in (("notifications[0].url_from_env", "AUDIT_OPS_URL"),
                            ("notifications[0].headers_from_env.Authorization", "AUDIT_OPS_TOKEN"),
                            ("rollout.gates[0].headers_from_env.Authorization", "AUDIT_CHECKS_TOKEN"),
                            ("rollout.steps[1].confirm.url_from_env", "AUDIT_APPROVALS_URL")):
        assert f"{where}{field}: environment variable {variable} is not set here" in out, field
    assert "AUDIT_SET_TOKEN" not in out and "s3cret" not in out
    assert "this gate is inconclusive" in out and "this confirm step waits" in out


# --- a reader that goes away, Ctrl-C: exit codes, no traceback ------------------------------


def _serve_ab(code: str, stdout) -> subprocess.CompletedProcess:
    """``code`` run by a fresh Python (its own stdout and signals), from the repository root."""
    return subprocess.run([sys.executable, "-c", code], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          cwd=REPO_ROOT, timeout=60, check=False)


def test_a_reader_that_closed_the_pipe_ends_the_command_quietly_with_141():
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `serve-ab validate ... | head -0`: every write fails with EPIPE
    try:
        result = _serve_ab("import sys; from serve_ab.cli.command import main; "
                           f"sys.exit(main(['validate', '--no-check-files', {str(GOOD)!r}]))", write_end)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


def test_output_that_cannot_be_written_is_a_line_and_exit_1_not_a_traceback():
    with open("/dev/full", "w") as full:  # every write fails with ENOSPC
        result = _serve_ab("import sys; from serve_ab.cli.command import main; "
                           f"sys.exit(main(['validate', '--no-check-files', {str(GOOD)!r}]))", full)
    assert (result.returncode, result.stderr) == (1, "error: could not write the output: No space left on device\n")


def test_no_stdout_at_all_is_no_error():
    result = subprocess.run([sys.executable, "-c", "import sys; from serve_ab.cli.command import main; "
                             f"sys.exit(main(['validate', '--no-check-files', {str(GOOD)!r}]))"],
                            stdin=subprocess.DEVNULL, stdout=None, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                            timeout=60, check=False, preexec_fn=lambda: os.close(1))
    assert (result.returncode, result.stderr) == (0, "")


def test_with_stdout_closed_no_file_the_command_opens_takes_fd_1():
    """The closed fd 1 is the lowest free number: gRPC's epoll fd took it (an epoll error on
    stderr about 1 run in 50). What fd 1 is once the command has run, reported on stderr."""
    code = ("import os, sys; from serve_ab.cli.command import main; "
            f"main(['validate', '--no-check-files', {str(GOOD)!r}]); "
            "sys.stderr.write(os.readlink('/proc/self/fd/1'))")
    result = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=None,
                            stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, timeout=60, check=False,
                            preexec_fn=lambda: os.close(1))
    assert (result.returncode, result.stderr) == (0, os.devnull)


def test_a_child_of_the_command_inherits_the_held_fds():
    """Held with os.open, the fds were close-on-exec: a child (Ray's processes, a shell) started
    with fd 0 and fd 1 closed again, and its first file took fd 1. What the child finds there."""
    child = ("import os, sys\n"
             "for fd in (0, 1):\n"
             "    try:\n        sys.stderr.write(os.readlink(f'/proc/self/fd/{fd}') + ' ')\n"
             "    except OSError:\n        sys.stderr.write('closed ')\n")
    code = ("import subprocess, sys; from serve_ab.cli.command import main; "
            f"main(['validate', '--no-check-files', {str(GOOD)!r}]); "
            f"subprocess.run([sys.executable, '-c', {child!r}], check=True)")
    result = subprocess.run([sys.executable, "-c", code], stdout=None, stderr=subprocess.PIPE, text=True,
                            cwd=REPO_ROOT, timeout=60, check=False,
                            preexec_fn=lambda: (os.close(0), os.close(1)))
    assert (result.returncode, result.stderr) == (0, f"{os.devnull} {os.devnull} ")


def test_ctrl_c_ends_the_command_with_130_and_no_traceback():
    result = _serve_ab("import sys; from serve_ab.cli import command\n"
                       "def interrupted(*args, **kwargs):\n    raise KeyboardInterrupt\n"
                       "command.check_file = interrupted\n"
                       "sys.exit(command.main(['validate', 'configs/ab.yaml']))", subprocess.PIPE)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "interrupted\n")


def test_route_prefix_and_deployment_overrides_ray_refuses_only_at_deploy_are_refused(tmp_path, capsys):
    """Ray Serve's schema takes route_prefix: abc and a deployments: override of a deployment
    the app does not make; `serve run` then fails to deploy ('Route prefix must start with
    "/"', "Deployment 'Nope' does not exist"), after validate said ok."""
    import yaml

    def check(change) -> str:
        config = yaml.safe_load(GOOD.read_text())
        change(config["applications"][0])
        path = tmp_path / "app.yaml"
        path.write_text(yaml.safe_dump(config))
        cli.main(["validate", str(path)])
        return capsys.readouterr().out

    out = check(lambda app: app.update(route_prefix="abc"))
    assert "  - applications.0.route_prefix: 'abc' must start with /, e.g. '/abc'" in out, out
    out = check(lambda app: app.update(route_prefix="/abc/"))
    assert "  - applications.0.route_prefix: '/abc/' must not end with / (unless it is just /), e.g. '/abc'" in out
    out = check(lambda app: app.update(deployments=[{"name": "Nope", "num_replicas": 3}]))
    assert ("  - applications.0.deployments.0.name: 'Nope' is not a deployment of this app; its deployments are "
            "Router, Controller") in out, out
    for fine in ({"route_prefix": "/digits"}, {"route_prefix": None}, {"deployments": [{"name": "Router"}]}):
        assert check(lambda app: app.update(fine)).endswith("ok\n"), fine

    isolated = REPO_ROOT / "configs" / "ab_isolated.yaml"
    config = yaml.safe_load(isolated.read_text())
    config["applications"][0]["deployments"] = [{"name": "version-v2", "max_ongoing_requests": 32},
                                                {"name": "version-v9"}]
    path = tmp_path / "isolated.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "applications.0.deployments.0" not in out
    assert ("  - applications.0.deployments.1.name: 'version-v9' is not a deployment of this app; its deployments "
            "are Router, Controller, version-v1, version-v2") in out, out


def test_a_port_no_socket_binds_is_refused_by_field(tmp_path, capsys):
    """Ray Serve's schema takes http_options.port: 99999; its proxy then fails to bind."""
    import yaml

    for section, port in (("http_options", 99999), ("grpc_options", -1)):
        config = yaml.safe_load(GOOD.read_text())
        config.setdefault(section, {})["port"] = port
        path = tmp_path / "port.yaml"
        path.write_text(yaml.safe_dump(config))
        assert cli.main(["validate", str(path)]) == 1
        assert f"  - {section}.port: {port} is not a TCP port (0 to 65535), e.g. 8000" in \
            capsys.readouterr().out


def test_autoscaling_settings_ray_ignores_or_serve_ab_raises_are_warned_about(tmp_path, capsys):
    # A hold on the last replica of a deployment that never goes to zero did nothing, silently;
    # blue's hold raised to keep_blue_s showed only in the app's log once deployed.
    import yaml

    serve_file = yaml.safe_load((REPO_ROOT / "configs" / "blue_green.yaml").read_text())
    args = serve_file["applications"][0]["args"]
    args["placement"] = "isolated"
    args.pop("router", None)
    args["rollout"]["blue_green"]["keep_blue_s"] = 120
    stable = args["rollout"]["stable"]
    for version in args["versions"]:
        version["deployment"] = {"autoscaling_config": (
            {"min_replicas": 0, "max_replicas": 2, "downscale_delay_s": 10} if version["name"] == stable
            else {"min_replicas": 1, "max_replicas": 2, "downscale_to_zero_delay_s": 60})}
    path = tmp_path / "blue_green_isolated.yaml"
    path.write_text(yaml.safe_dump(serve_file))
    assert cli.main(["validate", "--no-check-files", str(path)]) == 0  # advice, not an error
    out = capsys.readouterr().out
    blue = next(i for i, v in enumerate(args["versions"]) if v["name"] == stable)
    where = "warning: applications.0.args.versions"
    assert (f"{where}.{1 - blue}.deployment.autoscaling_config.downscale_to_zero_delay_s: 60 has no effect with "
            "min_replicas 1") in out
    assert (f"{where}.{blue}.deployment.autoscaling_config.downscale_to_zero_delay_s: blue ({stable!r}) may scale "
            "to zero, so it is deployed with 120 s (rollout.blue_green.keep_blue_s), not downscale_delay_s's 10 s "
            "(it is unset)") in out
    assert "INFO" not in out  # the builder's log line is not validate's output

    # Held long enough already, and no hold where none can act: nothing to say.
    for version in args["versions"]:
        version["deployment"] = {"autoscaling_config": {"min_replicas": 0, "max_replicas": 2}}  # 600 s >= 120
    path.write_text(yaml.safe_dump(serve_file))
    assert cli.main(["validate", "--no-check-files", str(path)]) == 0
    assert "downscale_to_zero_delay_s" not in capsys.readouterr().out
