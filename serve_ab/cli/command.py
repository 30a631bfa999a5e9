"""The ``serve-ab`` command."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from serve_ab.analysis.clusters import MIN_GROUPS
from serve_ab.config.experiment import (
    Backend,
    ConfigError,
    ExperimentConfig,
    Placement,
    errors_under,
    format_validation_error,
    parse_experiment,
)
from serve_ab.config.rollout import DRIFT_METRICS, GateMetric, SetWeightStep, promql_placeholders
from serve_ab.cli.preflight import LOAD_TIMEOUT_S
from serve_ab.config.known_keys import unknown_keys
from serve_ab.config.serve_file import (
    CONTROLLER_DEPLOYMENT,
    ROUTER_DEPLOYMENT,
    AppKind,
    check_app,
    deployment_override_errors,
    load_yaml,
    port_errors,
    version_deployment,
)
from serve_ab.routing import NUM_BUCKETS
from serve_ab.store.state import describe_store

BUILDER_PREFIX = "serve_ab"


def validate_file(path: Path, check_files: bool = True, load_models: bool = False,
                  load_timeout_s: float = LOAD_TIMEOUT_S) -> list[str]:
    """Every problem in a config file, one line each; empty when it is valid.

    Takes a Ray Serve config file (``applications:``, whose serve-ab apps hold the
    experiment in ``args:``) or a bare experiment file. ``load_models``: also load every
    version and run a blue-green validation, as a replica would (:mod:`serve_ab.cli.preflight`),
    within ``load_timeout_s`` per app.
    """
    return check_file(path, check_files, load_models, load_timeout_s)[0]


def check_file(path: Path, check_files: bool = True, load_models: bool = False,
               load_timeout_s: float = LOAD_TIMEOUT_S) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` of a config file: errors make it invalid, warnings are advice
    (e.g. a multi-node app keeping its state in a node-local SQLite file)."""
    warnings: list[str] = []
    errors = _check_file(path, check_files, warnings, load_models and check_files, load_timeout_s)
    return errors, warnings


def multi_node_warnings(cfg: ExperimentConfig, prefix: str = "") -> list[str]:
    """A warning when the config looks like it runs on several nodes but keeps its state in SQLite.

    Several nodes: isolated placement (each version its own deployment, placed anywhere),
    more than one router replica (fixed or autoscaled) or any GPU asked for (GPU nodes beside
    the head). The controller can then be rescheduled to another node, where a SQLite file
    on the first node's disk is out of reach and the rollout restarts at 0% candidate.
    """
    if cfg.controller.store_url is not None:
        return []
    router = cfg.router
    reasons = []
    if cfg.placement is Placement.ISOLATED:
        reasons.append("placement is isolated")
    if (router.num_replicas or 1) > 1 or (router.autoscaling_config and router.autoscaling_config.max_replicas > 1):
        reasons.append("the router has more than one replica")
    options = [cfg.router.ray_actor_options, *(v.deployment.ray_actor_options for v in cfg.versions if v.deployment)]
    if any(o.num_gpus > 0 for o in options):
        reasons.append("it asks for GPUs")
    if not reasons:
        return []
    where = f"{prefix}.controller" if prefix else "controller"
    return [(f"{where}: rollout state is kept in a SQLite file on one node ({cfg.controller.state_path}), but "
            f"this app looks like it runs on several nodes ({', '.join(reasons)}); a controller moved to another "
            f"node would not find it, and would restart a rollout from its first step and the run's figures from "
            f"zero. For a multi-node cluster set "
            f"{where}.store_url: redis://HOST:6379/0 (see the README, 'Running on a multi-node Ray cluster'); "
            f"on a one-node cluster nothing is lost and this does not apply")]


def unset_env_warnings(cfg: ExperimentConfig, prefix: str = "") -> list[str]:
    """A warning for each environment variable a notification receiver, webhook gate or confirm
    step reads (url_from_env, headers_from_env) that is not set here. A warning, not an error:
    the variable may be set only where the app runs, and only there does it count."""
    from serve_ab.rollout.webhook import unset_env_vars

    def then(path: str) -> str:
        if path.startswith("notifications"):
            return "this receiver's events are lost"
        if path.startswith("rollout.gates"):
            return "this gate is inconclusive and holds the rollout until progress_deadline_s aborts it"
        return "this confirm step waits for a yes that cannot come"

    where = f"{prefix}." if prefix else ""
    return [f"{where}{path}: environment variable {variable} is not set here; unless it is set where the app "
            f"runs (the controller reads it there), {then(path)}"
            for path, variable in unset_env_vars(cfg.notifications, cfg.rollout)]


def small_canary_warnings(cfg: ExperimentConfig, prefix: str = "") -> list[str]:
    """A warning for each canary step whose weight gives the candidate so few buckets that its
    users fall in fewer than MIN_GROUPS groups: the gates then count each group as one unit
    (analysis/clusters.py), so the gates that must show the candidate is within bounds hold
    the step long (it looks stuck), and the drift gates, harm detectors, can hardly fail."""
    rollout = cfg.rollout
    if rollout is None:
        return []
    judged = [g for g in rollout.gates if g.metric not in (GateMetric.PROMQL, GateMetric.WEBHOOK)]
    holding = [g.label for g in judged if g.metric not in DRIFT_METRICS]
    blind = [g.label for g in judged if g.metric in DRIFT_METRICS]
    if not judged:
        return []
    where = f"{prefix}.rollout" if prefix else "rollout"
    until = ("analysis.progress_deadline_s aborts it" if rollout.analysis.progress_deadline_s is not None
             else "someone acts (analysis.progress_deadline_s is unset)")
    effects = ([f"{', '.join(holding)} can seldom pass there, and the step is likely to hold until {until}"]
               if holding else [])
    if blind:
        effects.append(f"{', '.join(blind)} see too little there to fail, even on a real shift")
    out = []
    for index, step in enumerate(rollout.steps):
        if not isinstance(step, SetWeightStep) or step.set_weight <= 0:
            continue
        buckets = round(step.set_weight / 100.0 * NUM_BUCKETS)
        if buckets < MIN_GROUPS:
            out.append(
                f"{where}.steps[{index}]: set_weight {step.set_weight:g} gives the candidate {buckets} of "
                f"{NUM_BUCKETS:,} buckets, so its users fall in fewer than {MIN_GROUPS} groups, each of which the "
                f"gates count as one unit (a user's requests are not independent evidence): {'; '.join(effects)}. "
                f"set_weight {MIN_GROUPS * 100.0 / NUM_BUCKETS:g} or more lets them judge the users")
    return out


def lowered_weight_warnings(cfg: ExperimentConfig, prefix: str = "") -> list[str]:
    """A warning for each canary step that lowers the candidate's weight: a user keeps their
    version only while the weight grows (raising it moves buckets from stable to the candidate
    only), so the users in the buckets given back saw the candidate and will now see stable."""
    rollout = cfg.rollout
    if rollout is None:
        return []
    where = f"{prefix}.rollout" if prefix else "rollout"
    out, highest = [], 0.0
    for index, step in enumerate(rollout.steps):
        if not isinstance(step, SetWeightStep):
            continue
        if step.set_weight < highest:
            out.append(f"{where}.steps[{index}]: set_weight {step.set_weight:g} after {highest:g} sends the users "
                       f"of {highest - step.set_weight:g}% of the buckets, who were served by {rollout.candidate}, "
                       f"back to {rollout.stable}: they switch versions, and their figures mix both (a weight that "
                       "only grows keeps every user on one version until it moves them to the candidate)")
        highest = max(highest, step.set_weight)
    return out


def autoscaling_warnings(cfg: ExperimentConfig, prefix: str = "") -> list[str]:
    """A warning for each ``downscale_to_zero_delay_s`` Ray will ignore (the deployment never
    goes to zero: ``min_replicas`` is 1 or more), and for a blue-green's blue whose hold on its
    last replica the builder raises to ``keep_blue_s`` (:mod:`serve_ab.serving.keep_warm`), so
    that the deployed value is no surprise."""
    from serve_ab.serving.keep_warm import raised_holds

    where = f"{prefix}." if prefix else ""
    out = []
    deployments = [("router", cfg.router)] + [(f"versions.{index}.deployment", version.deployment)
                                              for index, version in enumerate(cfg.versions) if version.deployment]
    for path, deployment in deployments:
        scaling = deployment.autoscaling_config
        if scaling is not None and scaling.min_replicas > 0 and scaling.downscale_to_zero_delay_s is not None:
            out.append(f"{where}{path}.autoscaling_config.downscale_to_zero_delay_s: "
                       f"{scaling.downscale_to_zero_delay_s:g} has no effect with min_replicas "
                       f"{scaling.min_replicas} (Ray holds a last replica only for a deployment that may scale "
                       "to zero); set min_replicas: 0, or leave it out")
    for hold in raised_holds(cfg):
        given = (f"its {hold.held_s:g} s" if hold.zero_delay_set
                 else f"downscale_delay_s's {hold.held_s:g} s (it is unset)")
        out.append(f"{where}versions.{hold.index}.deployment.autoscaling_config.downscale_to_zero_delay_s: blue "
                   f"({hold.version!r}) may scale to zero, so it is deployed with {hold.keep_blue_s:g} s "
                   f"(rollout.blue_green.keep_blue_s), not {given}: its last replica stays warm that long after "
                   "the switch, for an instant rollback")
    return out


def undeclared_inputs_warnings(cfg: ExperimentConfig, prefix: str = "") -> list[str]:
    """A warning for each python version that names no inputs: and whose class has no
    input_spec attribute: it fails to load unless the class sets one in __init__ or load(),
    which only loading it (``validate --load``, or serving) finds out."""
    from serve_ab.backends.python import import_model_class

    where = f"{prefix}.versions" if prefix else "versions"
    return [f"{where}.{index}: class {version.class_} has no input_spec attribute and the version no inputs:; "
            "unless its __init__ or load() sets self.input_spec, it will fail to load. Declare the inputs one "
            "way, e.g. inputs: [{name: x, datatype: FP32, shape: [-1, 4]}] (validate --load tries it)"
            for index, version in enumerate(cfg.versions)
            if version.backend is Backend.PYTHON and version.inputs is None
            and getattr(import_model_class(version.class_), "input_spec", None) is None]


def _check_file(path: Path, check_files: bool, warnings: list[str], load_models: bool = False,
                load_timeout_s: float = LOAD_TIMEOUT_S) -> list[str]:
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{path}: no such file"]
    except IsADirectoryError:
        return [f"{path}: is a directory; give a config file (.yaml), e.g. configs/ab.yaml"]
    except UnicodeDecodeError as err:
        return [f"{path}: not a text file (byte {err.start} is not UTF-8); a config is YAML text, e.g. configs/ab.yaml"]
    except OSError as err:  # permission denied, a FIFO, an I/O error
        return [f"{path}: cannot be read: {err.strerror or type(err).__name__}"]
    except yaml.YAMLError as err:
        return [f"{path}: not valid YAML: {err}"]
    except RecursionError:  # PyYAML reads nested lists and mappings by recursion
        return [(f"{path}: nested too deeply to read (hundreds of levels of lists or mappings); a config is a few "
                 "levels deep: was it generated by a program gone wrong?")]
    except ValueError as err:  # a value PyYAML cannot build: an int of over 4,300 digits, a date like 2026-13-01
        reason = str(err).split("; use sys.")[0]  # not Python's advice to raise its limit: a config needs no such int
        return [f"{path}: not valid YAML: a value cannot be read ({reason})"]
    if raw is None:
        return [f"{path}: the file is empty; expected an experiment, or a Ray Serve config file with applications:"]
    if not isinstance(raw, dict):
        return [f"{path}: expected a mapping at the top level (got {type(raw).__name__})"]
    if "applications" not in raw:
        misplaced = _misread_serve_file(raw)
        if misplaced:
            return [f"{path}: {misplaced}"]
        return _validate_experiment(raw, "", check_files, warnings, load_models, load_timeout_s)[0]

    from pydantic import ValidationError
    import ray
    from ray.serve.schema import ServeDeploySchema  # Ray's own check of its own format

    errors: list[str] = []
    try:
        ServeDeploySchema.model_validate(raw)
    except ValidationError as err:
        errors += format_validation_error(err, model=ServeDeploySchema)
    except ImportError as err:  # Ray's schema imports the classes a file names (request_router_class, ...)
        errors.append(f"Ray Serve's schema could not import a class this file names ({err}); is its module "
                      "on the import path? (--app-dir, as serve run's)")
    errors += port_errors(raw)
    warnings += unknown_keys(raw, ServeDeploySchema, ray_version=ray.__version__)
    apps = raw.get("applications") or []
    found = False
    experiments: list[tuple[str, ExperimentConfig]] = []
    for index, app in enumerate(apps if isinstance(apps, list) else []):
        if isinstance(app, dict) and str(app.get("import_path", "")).startswith(BUILDER_PREFIX):
            found = True
            kind, app_errors = check_app(app, f"applications.{index}")
            errors += app_errors
            if kind is AppKind.EXPERIMENT:
                prefix = f"applications.{index}.args"
                app_errors, cfg = _validate_experiment(app.get("args"), prefix, check_files, warnings, load_models,
                                                       load_timeout_s)
                errors += app_errors
                if cfg is not None:
                    experiments.append((prefix, cfg))
                    errors += deployment_override_errors(app, f"applications.{index}", experiment_deployments(cfg))
    errors += shared_state_errors(experiments)
    warnings += shared_model_promql_warnings(experiments)
    if not found and not errors:
        errors.append(
            f"applications: no application imports {BUILDER_PREFIX} (e.g. import_path: "
            "serve_ab.serving.app:build_app); nothing for serve-ab to check"
        )
    return errors


def experiment_deployments(cfg: ExperimentConfig) -> list[str]:
    """The deployments serve-ab's builder makes for ``cfg`` (serving/app.py)."""
    versions = [version_deployment(v.name) for v in cfg.versions] if cfg.placement is Placement.ISOLATED else []
    return [ROUTER_DEPLOYMENT, CONTROLLER_DEPLOYMENT, *versions]


def _misread_serve_file(raw: dict) -> str | None:
    """Why a file without ``applications:`` looks like a Ray Serve config file gone wrong
    rather than a bare experiment (whose own errors would then mislead), or None."""
    import difflib

    typo = next((key for key in raw if isinstance(key, str) and key != "applications"
                 and difflib.get_close_matches(key.lower(), ["applications"], n=1, cutoff=0.8)), None)
    if typo is not None:
        return f"{typo!r} at the top level: did you mean applications: (Ray Serve's list of apps)?"
    if "import_path" in raw:
        return ("import_path at the top level: Ray Serve's config file lists its apps under applications:, "
                "e.g. applications: [{name: ab, route_prefix: /, import_path: serve_ab.serving.app:build_app, "
                "args: {model: ..., versions: [...], weights: {...}}}]; a bare experiment (model:, versions:, "
                "weights:) has no import_path")
    return None


def _validate_experiment(args: Any, prefix: str, check_files: bool, warnings: list[str],
                         load_models: bool = False, load_timeout_s: float = LOAD_TIMEOUT_S,
                         ) -> tuple[list[str], ExperimentConfig | None]:
    """The experiment's errors, and the experiment where it parsed. ``load_models``: also
    every version loaded and a blue-green validation run (:mod:`serve_ab.cli.preflight`)."""
    try:
        cfg = parse_experiment(args)
    except ConfigError as err:
        return errors_under(prefix, err.errors), None
    warnings += (multi_node_warnings(cfg, prefix) + small_canary_warnings(cfg, prefix)
                 + lowered_weight_warnings(cfg, prefix) + unset_env_warnings(cfg, prefix)
                 + autoscaling_warnings(cfg, prefix))
    if not load_models:  # loading says for certain whether the inputs are known
        warnings += undeclared_inputs_warnings(cfg, prefix)
    if not check_files:
        return [], cfg
    from serve_ab.serving.app import resolve_model_paths

    try:
        resolved = resolve_model_paths(cfg)
    except ConfigError as err:
        return errors_under(prefix, err.errors), cfg
    if load_models:
        from serve_ab.cli.preflight import model_errors

        return model_errors(resolved, prefix, load_timeout_s), cfg
    return [], cfg


def shared_state_errors(experiments: list[tuple[str, ExperimentConfig]]) -> list[str]:
    """Two apps of one file serving the same ``model`` from the same state store would share
    its records: the store's keys name the model, not the app (``serve_ab/store/keys.py``), so
    each would resume, overwrite and report the other's rollout, run and feedback key."""
    errors, seen = [], {}
    for prefix, cfg in experiments:
        c = cfg.controller
        store = describe_store(c)
        where = (cfg.model, c.store_url, c.store_key_prefix if c.store_url is not None
                 else os.path.abspath(c.state_path))
        if where in seen:
            errors.append(
                f"{prefix}.model: {cfg.model!r} is also {seen[where]}.model, and both keep their state in {store}: "
                "the two apps would resume and overwrite each other's rollout, run record and feedback key; "
                "give one another model name, or its own controller.state_path (or store_key_prefix)")
        else:
            seen[where] = prefix
    return errors


def shared_model_promql_warnings(experiments: list[tuple[str, ExperimentConfig]]) -> list[str]:
    """Two apps of one file serving the same ``model``: Prometheus holds both apps' series under
    that model, told apart only by ``application`` (serve_ab/serving/metrics.py). A promql gate
    selecting by model and version alone reads the other app's requests as its own (live, a
    canary's gate read 102 requests/s of v2 where the canary's v2 served 16)."""
    warnings = []
    for prefix, cfg in experiments:
        others = [other for other, other_cfg in experiments if other != prefix and other_cfg.model == cfg.model]
        if not others or cfg.rollout is None:
            continue
        for index, gate in enumerate(cfg.rollout.gates):
            query = gate.query or ""
            if gate.metric is not GateMetric.PROMQL or "app" in promql_placeholders(query) or "application" in query:
                continue
            warnings.append(
                f"{prefix}.rollout.gates.{index}.query: promql[{gate.name}] does not select by application, and "
                f"{others[0]} serves model {cfg.model!r} too: its series would be added to this app's; select "
                'application="{{app}}" (e.g. serve_ab_requests_total{application="{{app}}", '
                'version="{{candidate}}"})')
    return warnings


def _cmd_validate(args: argparse.Namespace) -> int:
    if args.load and args.no_check_files:
        print("serve-ab validate: --load loads the model files that --no-check-files skips; give one of them",
              file=sys.stderr)
        return 2
    if args.load_timeout_s is not None and not args.load:
        print("serve-ab validate: --load-timeout limits --load, which was not given; add --load or drop it",
              file=sys.stderr)
        return 2
    # `serve run` imports a python version's class with --app-dir (the cwd by default) first
    # on sys.path; the serve-ab script's own directory is there instead.
    app_dir = os.path.abspath(args.app_dir)
    if not os.path.isdir(app_dir):
        print(f"serve-ab validate: --app-dir {args.app_dir!r} is not a directory", file=sys.stderr)
        return 2
    saved_path = list(sys.path)
    sys.path.insert(0, app_dir)
    try:
        return _validate_files(args)
    finally:
        sys.path[:] = saved_path  # validate may run in a caller's process (tests, tools)


def _validate_files(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            errors, warnings = check_file(Path(path), check_files=not args.no_check_files,
                                          load_models=args.load,
                                          load_timeout_s=args.load_timeout_s or LOAD_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - one file's surprise must not hide the other files' results
            errors, warnings = [(f"{path}: could not be checked ({type(err).__name__}: {err}); this is a bug in "
                                 "serve-ab validate, please report it with the file")], []
        if errors:
            status = 1
            print(f"{path}: {len(errors)} error{'s' * (len(errors) != 1)}")
            for error in errors:
                print(f"  - {error}")
        else:
            print(f"{path}: ok")
        for warning in warnings:  # advice: the exit status stays the errors'
            print(f"  warning: {warning}")
    return status


COMPLETION_SHELLS = ("bash", "zsh", "fish")


def _cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    print(argcomplete.shellcode(["serve-ab"], shell=args.shell), end="")
    return 0


def make_parser() -> argparse.ArgumentParser:
    from serve_ab.cli.options import EXIT_CODES_HELP, duration_s

    parser = argparse.ArgumentParser(
        prog="serve-ab",
        description="Serve several versions of a model on Ray Serve and move traffic between them.",
        epilog=EXIT_CODES_HELP + "\n\nshell completion: eval \"$(serve-ab completion bash)\" (or zsh, fish)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check config files and print every error")
    validate.add_argument("files", nargs="+", help="Ray Serve config files or bare experiment files")
    validate.add_argument(
        "--no-check-files", action="store_true",
        help="do not check that model files exist (relative paths resolve against the cwd)",
    )
    validate.add_argument(
        "--load", action="store_true",
        help="also load every version as a replica would (its backend, its warm-up call; on this "
        "machine's CPU), check that the versions share one input and output, and run a blue-green "
        "rollout's validation",
    )
    validate.add_argument(
        "--load-timeout", type=duration_s, default=None, metavar="DURATION", dest="load_timeout_s",
        help=f"with --load: how long one app's versions may take to load and answer, e.g. 90s or 15m "
        f"(default {LOAD_TIMEOUT_S / 60:g}m); past it, validate names the step and exits 1",
    )
    validate.add_argument(
        "--app-dir", default=".", metavar="DIR",
        help="the directory a python version's `class` imports from, put first on the import path, "
        "as `serve run`'s --app-dir (default: the current directory)",
    )
    validate.set_defaults(func=_cmd_validate)

    from serve_ab.cli import report as report_cli
    from serve_ab.cli import rollout as cli_rollout
    from serve_ab.cli import sample_size as cli_sample_size

    cli_sample_size.add_parser(sub)
    cli_rollout.add_parsers(sub)
    report_cli.add_parsers(sub)

    completion = sub.add_parser(
        "completion", help="print the shell code that completes serve-ab's commands and flags",
        description="Print the code that makes the shell complete serve-ab's commands and flags (argcomplete); "
        "e.g. add `eval \"$(serve-ab completion bash)\"` to ~/.bashrc, or `serve-ab completion zsh` to "
        "~/.zshrc. The same as argcomplete's `register-python-argcomplete serve-ab`.",
    )
    completion.add_argument("shell", choices=COMPLETION_SHELLS, help="the shell to complete in")
    completion.set_defaults(func=_cmd_completion)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (see ``serve_ab/cli/options.py``)."""
    from serve_ab.cli.options import ExitCode

    _hold_standard_fds()
    try:
        code = _run(argv)
        # Flushed here, not at exit: a reader that went away (`serve-ab runs | head -1`) is seen
        # while it can still be handled. No stdout at all (`>&-`): Python's print writes nothing.
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        # As Python's docs advise (library/signal, "Note on SIGPIPE"): point stdout at devnull, so that
        # the flush at exit does not fail again, and exit as a process SIGPIPE ended would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE
    except OSError as err:
        # The commands handle their own files and connections; what reaches here is writing the
        # output (`> /dev/full`, a disk gone): a line, not a traceback. Then stdout goes to
        # devnull, so that the flush at exit does not fail again with Python's own message.
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: could not write the output{where}: {err.strerror or err}", file=sys.stderr)
        if sys.stdout is not None:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    return code


def _hold_standard_fds() -> None:
    """Put /dev/null on whichever of fds 0-2 is closed (`serve-ab validate ... >&-`).

    A closed standard fd's number is the lowest free one, so the next file the process opens takes
    it: gRPC's epoll fd (``validate`` loads Ray, which loads gRPC), a config file, a socket. Anything
    then writing to "stdout" at the C level, or a child inheriting fd 1, writes into that file; with
    fd 1 closed, gRPC printed an epoll error on stderr about 1 run in 50. Daemons hold the three
    numbers the same way. Python's own ``sys.stdout`` stays ``None``: printing still writes nothing.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:  # closed: the open below takes this number, being the lowest free one
            held = os.open(os.devnull, os.O_RDWR)
            if held != fd:  # not expected, but then hold this number explicitly
                os.dup2(held, fd)
                os.close(held)
            # os.open's files are close-on-exec (PEP 446): a child would start with this number
            # closed again, and its first file take it. A standard fd is inherited.
            os.set_inheritable(fd, True)


def _run(argv: list[str] | None) -> int:
    parser = make_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions: answer and exit, run nothing
        import argcomplete

        argcomplete.autocomplete(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(_joined_negative_values(argv, _options_taking_a_value(parser)))
    return args.func(args)


_NEGATIVE_VALUE = re.compile(r"-\.?\d")


def _joined_negative_values(argv: list[str], options: set[str]) -> list[str]:
    """``--timeout -5s`` as ``--timeout=-5s``, for the ``options`` that take a value.
    argparse takes a word starting with a dash for an option unless it is a plain number, so
    a negative duration (``-5s``) was refused as "expected one argument", never reaching the
    check that says what is valid."""
    joined: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":  # what follows is positional, as argparse reads it
            return joined + argv[i:]
        if word in options and i + 1 < len(argv) and _NEGATIVE_VALUE.match(argv[i + 1]):
            joined.append(f"{word}={argv[i + 1]}")
            i += 2
            continue
        joined.append(word)
        i += 1
    return joined


def _options_taking_a_value(parser: argparse.ArgumentParser) -> set[str]:
    """The long options of ``parser`` and its commands that take exactly one value."""
    options: set[str] = set()
    for action in parser._actions:  # argparse has no public walk of its options
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                options |= _options_taking_a_value(command)
        elif action.nargs is None and action.option_strings:
            options.update(name for name in action.option_strings if name.startswith("--"))
    return options


if __name__ == "__main__":
    sys.exit(main())
