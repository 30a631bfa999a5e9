"""``serve-ab report`` and ``serve-ab runs``: the A/B report of a running app or a stored run.

Wiring, for ``serve_ab/cli/command.py``::

    subparsers = parser.add_subparsers(dest="command", required=True)
    report_cli.add_parsers(subparsers)
    args = parser.parse_args()
    return args.func(args)          # exit code

Examples::

    serve-ab report                               # GET $SERVE_AB_URL/experiment/report, as tables
    serve-ab report --html report.html            # the same, plus a page with plots
    serve-ab report -o json --url http://10.0.0.5:8000
    serve-ab report -o yaml --app digits-ab --address http://head:8265   # the app by its Serve name
    SERVE_AB_VIEWER_TOKEN=... serve-ab report     # an app with control.protect_reads (or --token)
    serve-ab runs --records .serve-ab/runs.sqlite
    serve-ab runs --store redis://redis.internal:6379/0     # an app with controller.store_url
    serve-ab report --from-record digits-20260101-120000 --html final.html

Exit codes, as every command (``serve_ab/cli/options.py``): 0 ok; 1 the app answered with an
error, or the record is missing; 2 usage error; 4 the app (or the ``--store`` Redis) could not
be reached.

Nothing heavy is imported until a command runs: matplotlib only for ``--html``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from serve_ab.analysis.report_model import REPORT_SCHEMA, Report, read_report
from serve_ab.cli import rollout as cli_rollout
from serve_ab.cli.options import ExitCode, RequestFailed, add_output_option, dump, hide_url_passwords
from serve_ab.cli.render_html import render_html
from serve_ab.cli.render_table import render_runs, render_table
from serve_ab.store.runs import CorruptRecord

__all__ = ["REPORT_PATH", "add_parsers", "run_report", "run_runs"]

REPORT_PATH = "/experiment/report"
DEFAULT_RECORDS = ".serve-ab/runs.sqlite"  # analysis.records.path's default, relative to serve run's cwd
_MAX_PROBLEMS = 5  # validation problems listed for a report that does not fit (and unknown fields named)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``report`` and ``runs``; each sets ``func`` (``args -> exit code``)."""
    report = subparsers.add_parser(
        "report", help="the A/B report: lifts, p-values, verdicts, SRM, power (tables, -o json|yaml, or --html)",
        description="Fetch the running app's A/B report (GET /experiment/report) or read a stored run "
        "record, and print a table per metric; -o json|yaml prints the report as data, --html FILE also writes "
        "a self-contained page with plots. An app with control.protect_reads needs a viewer, QA or operator "
        f"token: --token, else {cli_rollout.env_fallbacks(cli_rollout.READ_TOKEN_ENVS)}.",
    )
    cli_rollout.add_connection_options(report)
    cli_rollout.add_token_option(report)
    add_output_option(report, "the report")
    report.add_argument("--html", type=Path, default=None, metavar="FILE",
                        help="also write the report with plots to FILE (one self-contained HTML page)")
    report.add_argument("--from-record", default=None, metavar="RUN_ID",
                        help="render a stored run record instead of asking a running app (see serve-ab runs)")
    report.add_argument("--records", type=_records_path, default=None, metavar="PATH",
                        help=f"run record file for --from-record (default: {DEFAULT_RECORDS})")
    report.add_argument("--store", type=_store_url, default=None, metavar="URL",
                        help="for --from-record: the Redis the app keeps its state in (controller.store_url)")
    _add_store_options(report)
    report.set_defaults(func=functools.partial(run_report, parser=report))

    runs = subparsers.add_parser(
        "runs", help="list stored run records (configuration and final results of each experiment)",
        description="List the run records experiments write: the SQLite file at analysis.records.path, or "
        "the Redis of controller.store_url (--store).",
    )
    where = runs.add_mutually_exclusive_group()
    where.add_argument("--records", type=_records_path, default=None, metavar="PATH",
                       help=f"run record file (default: {DEFAULT_RECORDS})")
    where.add_argument("--store", type=_store_url, default=None, metavar="URL",
                       help="the Redis the app keeps its state in (controller.store_url), e.g. "
                       "redis://redis.internal:6379/0")
    _add_store_options(runs)
    add_output_option(runs, "the list")
    runs.set_defaults(func=functools.partial(run_runs, parser=runs))


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store-password-env", default=None, metavar="NAME",
                        help="environment variable holding the Redis password (controller.store_password_env)")
    parser.add_argument("--store-key-prefix", default=None, metavar="PREFIX",
                        help="the app's controller.store_key_prefix (default: serve-ab:)")


def _records_path(text: str) -> Path:
    """``--records``: a run-record file; a directory is a usage error (SQLite would say only
    'unable to open database file')."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give the run-record file (the app's "
                                         f"analysis.records.path), e.g. --records {DEFAULT_RECORDS}")
    return path


def _store_url(text: str) -> str:
    """``--store``: a Redis URL only. With a SQLite store_url the run records are not in that file
    but at analysis.records.path, which --records reads."""
    from serve_ab.store.url import parse_store_url, redact_url

    if not text.lower().startswith(("redis://", "rediss://")):
        raise argparse.ArgumentTypeError(f"{redact_url(text)!r} is not a Redis URL; --store takes redis://HOST[:PORT]"
                                         "[/DB] or rediss:// (TLS), e.g. --store redis://redis.internal:6379/0; for "
                                         "a SQLite file use --records PATH")
    try:
        parse_store_url(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _store_password(args: argparse.Namespace) -> str | None:
    """The password ``--store-password-env`` names; ValueError (a usage error) when it is not set."""
    if getattr(args, "store", None) is None:
        for flag, value in (("--store-password-env", getattr(args, "store_password_env", None)),
                            ("--store-key-prefix", getattr(args, "store_key_prefix", None))):
            if value is not None:  # silently ignored, a reader would think the records came from Redis
                raise ValueError(f"argument {flag}: only read with --store redis://HOST[:PORT][/DB], the Redis "
                                 "store holding the run records; add --store or leave the flag out")
    name = getattr(args, "store_password_env", None)
    if name is None:
        return None
    import os

    from serve_ab.config._base import check_env_name

    check_env_name("argument --store-password-env", name, "REDIS_PASSWORD")  # not a pasted password, unquoted
    if name not in os.environ:
        raise ValueError(f"argument --store-password-env: names {name!r}, which is not set in this environment; "
                         f"export {name}=... (the Redis password) or leave the flag out")
    return os.environ[name]


def _records_location(args: argparse.Namespace, password: str | None) -> tuple[Any, str]:
    """The recorder ``--records``/``--store`` name, and how messages name it."""
    from serve_ab.store.runs import recorder_at
    from serve_ab.store.url import redact_url

    store = getattr(args, "store", None)
    if store is None:
        path = args.records or Path(DEFAULT_RECORDS)
        return recorder_at(path), str(path)
    from serve_ab.store.redis_store import DEFAULT_KEY_PREFIX

    prefix = args.store_key_prefix if args.store_key_prefix is not None else DEFAULT_KEY_PREFIX
    where = f"{redact_url(store)} (key prefix {prefix!r})"
    return recorder_at(store, password=password, prefix=args.store_key_prefix), where


def _store_hint(e: Exception, args: argparse.Namespace) -> str | None:
    """What to do about a Redis that refused to answer without a password (or with a wrong one)."""
    from serve_ab.store.state import password_refused

    if not password_refused(e):
        return None
    if getattr(args, "store_password_env", None) is None:
        return ("hint: this Redis needs a password: put it in an environment variable and name it with "
                "--store-password-env NAME (the app's controller.store_password_env)")
    return f"hint: check the password in ${args.store_password_env} (--store-password-env)"


def _unreachable(e: Exception) -> bool:
    """A Redis that did not answer (refused, timed out, unknown host): exit 4, as an app that
    cannot be reached. A refused password or TLS handshake is an answer (redis-py files both
    under ConnectionError): the controller's own rule, :func:`serve_ab.store.state.store_unreachable`."""
    from serve_ab.store.state import store_unreachable

    return store_unreachable(e)


def run_report(args: argparse.Namespace, *, parser: argparse.ArgumentParser | None = None,
               out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        if args.from_record is not None and (args.url is not None or args.app is not None):
            raise ValueError("argument --from-record: renders a stored record; it cannot be combined with "
                             f"{'--url' if args.url is not None else '--app'}")
        if args.from_record is None and args.records is not None:
            raise ValueError("argument --records: only applies with --from-record RUN_ID")
        if getattr(args, "store", None) is not None and (args.from_record is None or args.records is not None):
            raise ValueError("argument --store: only applies with --from-record RUN_ID, instead of --records")
        if args.from_record is not None and getattr(args, "token", None) is not None:
            raise ValueError("argument --token: only applies when reading a running app, not with --from-record")
        password = _store_password(args)
        # A stored record needs no token: one in the environment is not even checked then.
        found = None if args.from_record is not None else cli_rollout.resolve_token(args)
        url = None if args.from_record is not None else cli_rollout.resolve_url(args)
    except ValueError as e:
        if parser is None:
            raise
        parser.error(str(e))  # exits with status 2
    except RequestFailed as failure:
        for line in failure.lines:
            print(line, file=err)
        return failure.code
    if args.from_record is not None:
        read, code = _report_from_record(args.from_record, args, password, err)
    else:
        read, code = _report_from_app(url, args.request_timeout_s, found, err)
    if read is None:
        return code
    report, received = read
    if args.html is not None:
        try:
            args.html.write_text(render_html(report), encoding="utf-8")
        except OSError as e:
            print(f"error: cannot write {args.html}: {e.strerror or e}", file=err)
            return 1
        print(f"wrote {args.html}", file=err)
    # A report with fields this serve-ab does not know is printed as data as it came: -o json is
    # for reading every figure, also those this command cannot draw.
    data = report.model_dump(mode="json") if received is None else received
    print(render_table(report) if args.output == "table" else dump(data, args.output), file=out)
    return ExitCode.OK


def run_runs(args: argparse.Namespace, *, parser: argparse.ArgumentParser | None = None,
             out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        password = _store_password(args)
    except ValueError as e:
        if parser is None:
            raise
        parser.error(str(e))  # exits with status 2
    where = str(args.records or DEFAULT_RECORDS)
    try:
        recorder, where = _records_location(args, password)
        summaries = recorder.list()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=err)
        return ExitCode.FAILED
    except Exception as e:  # noqa: BLE001 - sqlite3.DatabaseError (not a database, locked), redis errors
        print(f"error: cannot read run records at {where}: {type(e).__name__}: {e}", file=err)
        if (hint := _store_hint(e, args)) is not None:
            print(hint, file=err)
        return ExitCode.UNREACHABLE if _unreachable(e) else ExitCode.FAILED
    if args.output == "table":
        print(render_runs(summaries, where), file=out)
    else:
        from dataclasses import asdict

        print(dump([asdict(s) for s in summaries], args.output), file=out)
    return ExitCode.OK


# A report read, and the data as received when fields this serve-ab does not know were left out of it.
_Read = tuple[Report, Any]


def _report_from_app(url: str, timeout_s: float, found: tuple[str, str] | None,
                     err: TextIO) -> tuple[_Read | None, int]:
    """The report (:data:`_Read`) and OK, or None and the exit code, after saying why. ``found``:
    the token to send and its source (:func:`cli_rollout.resolve_token`), or None."""
    token, token_from = found or (None, None)
    try:
        data = cli_rollout._send(url, "GET", REPORT_PATH, body=None, token=token, token_from=token_from,
                                 timeout_s=timeout_s, params=None)
    except RequestFailed as failure:
        cli_rollout._print_lines(failure.lines, token, err)  # redacted: a proxy's error page might echo it
        if failure.lines[0].startswith("error: 404"):
            print(hide_url_passwords(f"hint: {url} has no {REPORT_PATH}: is it a serve-ab app, and one recent "
                                     "enough to report? (GET /rollout/status answers on every serve-ab app)"),
                  file=err)
        return None, failure.code
    read = _parse(data, f"{url}{REPORT_PATH}", "is the app running another serve-ab version than this command?",
                  err)
    return read, ExitCode.OK if read is not None else ExitCode.FAILED


def _report_from_record(run_id: str, args: argparse.Namespace, password: str | None,
                        err: TextIO) -> tuple[_Read | None, int]:
    """The report (:data:`_Read`) and OK, or None and the exit code, after saying why."""
    path = str(args.records or DEFAULT_RECORDS)
    try:
        recorder, path = _records_location(args, password)
        data = recorder.load(run_id).report
    except CorruptRecord as e:
        print(f"error: run record {run_id!r} in {path} cannot be read: {e.detail}", file=err)
        print("hint: repair or delete that record (`serve-ab runs` lists the others)", file=err)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=err)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=err)
    except Exception as e:  # noqa: BLE001 - sqlite3.DatabaseError, redis errors and the like
        print(f"error: cannot read run records at {path}: {type(e).__name__}: {e}", file=err)
        if (hint := _store_hint(e, args)) is not None:
            print(hint, file=err)
        if _unreachable(e):
            return None, ExitCode.UNREACHABLE
    else:
        read = _parse(data, f"run record {run_id!r} in {path}",
                      "a record written by an older serve-ab may not fit this report layout", err)
        return read, ExitCode.OK if read is not None else ExitCode.FAILED
    return None, ExitCode.FAILED


def _parse(data: Any, source: str, hint: str, err: TextIO) -> _Read | None:
    """``data`` as a Report (:data:`_Read`), or None after saying which fields do not fit (never a
    traceback). Fields added by a newer serve-ab to this report layout are left out, and named."""
    try:
        report, dropped = read_report(data)
    except ValidationError as e:
        schema = data.get("schema") if isinstance(data, dict) else None
        print(f"error: the report of {source} does not fit the report layout (schema {schema!r}, this serve-ab "
              f"reads schema {REPORT_SCHEMA}); {e.error_count()} problem(s):", file=err)
        for problem in e.errors()[:_MAX_PROBLEMS]:
            where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
            print(f"  {where}: {problem['msg']}", file=err)
        if e.error_count() > _MAX_PROBLEMS:
            print(f"  ... and {e.error_count() - _MAX_PROBLEMS} more", file=err)
        print(f"hint: {hint}", file=err)
        return None
    if not dropped:
        return report, None
    shown = ", ".join(dropped[:_MAX_PROBLEMS]) + (f" and {len(dropped) - _MAX_PROBLEMS} more"
                                                  if len(dropped) > _MAX_PROBLEMS else "")
    print(f"note: the report of {source} has {len(dropped)} field(s) this serve-ab does not know, from a newer "
          f"serve-ab: {shown}; the table and page leave them out (-o json prints them): upgrade serve-ab to "
          "see them", file=err)
    return report, data

