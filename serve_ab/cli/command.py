"""The ``serve-ab`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from serve_ab.config.experiment import ConfigError, format_validation_error, parse_experiment

BUILDER_PREFIX = "serve_ab"


def validate_file(path: Path, check_files: bool = True) -> list[str]:
    """Every problem in a config file, one line each; empty when it is valid.

    Takes a Ray Serve config file (``applications:``, whose serve-ab apps hold the
    experiment in ``args:``) or a bare experiment file.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return [f"{path}: no such file"]
    except yaml.YAMLError as err:
        return [f"{path}: not valid YAML: {err}"]
    if not isinstance(raw, dict):
        return [f"{path}: expected a mapping at the top level (got {type(raw).__name__})"]
    if "applications" not in raw:
        return _validate_experiment(raw, "", check_files)

    from ray.serve.schema import ServeDeploySchema  # Ray's own check of its own format
    from pydantic import ValidationError

    errors: list[str] = []
    try:
        ServeDeploySchema.model_validate(raw)
    except ValidationError as err:
        errors += format_validation_error(err)
    apps = raw.get("applications") or []
    found = False
    for index, app in enumerate(apps if isinstance(apps, list) else []):
        if isinstance(app, dict) and str(app.get("import_path", "")).startswith(BUILDER_PREFIX):
            found = True
            errors += _validate_experiment(app.get("args"), f"applications.{index}.args", check_files)
    if not found and not errors:
        errors.append(
            f"applications: no application imports {BUILDER_PREFIX} (e.g. import_path: "
            "serve_ab.serving.app:build_app); nothing for serve-ab to check"
        )
    return errors


def _validate_experiment(args: Any, prefix: str, check_files: bool) -> list[str]:
    try:
        cfg = parse_experiment(args)
    except ConfigError as err:
        return [f"{prefix}.{e}" if prefix else e for e in err.errors]
    if not check_files:
        return []
    from serve_ab.serving.app import resolve_model_paths

    try:
        resolve_model_paths(cfg)
    except ConfigError as err:
        return [f"{prefix}.{e}" if prefix else e for e in err.errors]
    return []


def _cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        errors = validate_file(Path(path), check_files=not args.no_check_files)
        if errors:
            status = 1
            print(f"{path}: {len(errors)} error{'s' * (len(errors) != 1)}")
            for error in errors:
                print(f"  - {error}")
        else:
            print(f"{path}: ok")
    return status


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serve-ab",
        description="Serve several versions of a model on Ray Serve and move traffic between them.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check config files and print every error")
    validate.add_argument("files", nargs="+", help="Ray Serve config files or bare experiment files")
    validate.add_argument(
        "--no-check-files", action="store_true",
        help="do not check that model files exist (relative paths resolve against the cwd)",
    )
    validate.set_defaults(func=_cmd_validate)

    from serve_ab.cli import report as report_cli
    from serve_ab.cli import rollout as cli_rollout
    from serve_ab.cli import sample_size as cli_sample_size

    cli_sample_size.add_parser(sub)
    cli_rollout.add_parsers(sub)
    report_cli.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
