"""The command line (see the contract): parse flags, call the core, print, map errors to exit codes.

Heavy modules (logging and uuid among them) are imported inside the commands
that need them, so that `status` and `validate` start fast from scripts and cron.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from . import __version__
from .errors import ReconcilerError, UsageError
from .settings import Settings, default_state_dir

EXIT_OK, EXIT_ERROR, EXIT_PENDING, EXIT_UNSETTLED = 0, 1, 2, 3


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--specs/--state/--driver/-v, accepted before or after the subcommand."""

    @click.option("--specs", "specs", type=click.Path(path_type=Path), default=None, help="Specs directory [env RECONCILER_SPECS; ./specs].")
    @click.option("--state", "state", type=click.Path(path_type=Path), default=None, help="State directory [env RECONCILER_STATE].")
    @click.option("--driver", default=None, help="Default driver for specs that say auto [auto].")
    @click.option("-v", "--verbose", count=True, help="More logging on stderr.")
    @functools.wraps(func)
    def wrapper(*args: Any, specs: Path | None, state: Path | None, driver: str | None, verbose: int, **kwargs: Any) -> Any:
        obj = click.get_current_context().ensure_object(dict)
        obj.update({k: v for k, v in {"specs": specs, "state": state, "driver": driver}.items() if v is not None})
        obj["verbose"] = obj.get("verbose", 0) + verbose
        return func(*args, **kwargs)

    return wrapper


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--once", is_flag=True, help="One full pass, then exit (for cron)."),
            click.option("--stop-on-exit", is_flag=True, help="Stop all units gracefully on SIGTERM/SIGINT."),
            click.option("--allow-insecure-specs", is_flag=True, help="Accept spec files others can write (as root)."),
            click.option("--resync", type=float, default=None, help="Seconds between full resyncs [300]."),
            click.option("--events-max-bytes", type=int, default=None, help="Rotate the event log above this size [10 MiB]."),
            click.option("--events-keep", type=int, default=None, help="Rotated event logs kept [5]."),
        ]
    ):
        func = option(func)
    return func


def settings_from(obj: dict[str, Any], **overrides: Any) -> Settings:
    specs = obj.get("specs") or Path(os.environ.get("RECONCILER_SPECS") or "specs")
    state = obj.get("state") or Path(os.environ.get("RECONCILER_STATE") or default_state_dir())
    known = {k: v for k, v in overrides.items() if v is not None}
    return Settings(specs_dir=specs.absolute(), state_dir=state.absolute(), driver=obj.get("driver") or "auto", **known)


def fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"reconciler: {message}", err=True)
    sys.exit(code)


class Main(click.Group):
    """Turns expected errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ReconcilerError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            sys.exit(130)


@click.group(cls=Main, invoke_without_command=True)
@common_options
@run_options
@click.version_option(__version__, prog_name="reconciler")
@click.pass_context
def main(ctx: click.Context, **run_flags: Any) -> None:
    """Make running processes match the spec files in a directory, and keep them so."""
    ctx.obj["run_flags"] = run_flags
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


@main.command()
@common_options
@run_options
@click.pass_obj
def run(obj: dict[str, Any], **flags: Any) -> None:
    """Watch the specs and reconcile until SIGTERM/SIGINT (SIGHUP forces a pass)."""
    flags = {k: v or obj.get("run_flags", {}).get(k) for k, v in flags.items()}
    once = bool(flags.pop("once"))
    settings = settings_from(
        obj,
        stop_on_exit=bool(flags.pop("stop_on_exit")),
        allow_insecure_specs=bool(flags.pop("allow_insecure_specs")),
        resync_interval=flags.pop("resync"),
        events_max_bytes=flags.pop("events_max_bytes"),
        events_keep=flags.pop("events_keep"),
    )
    import logging

    from .daemon import run_daemon, run_once

    logging.basicConfig(level=logging.WARNING - 10 * obj.get("verbose", 0), format="reconciler: %(message)s")

    if once:
        sys.exit(run_once(settings))
    sys.exit(run_daemon(settings))


@main.command()
@common_options
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="The documented JSON (schema 1).")
@click.pass_obj
def status(obj: dict[str, Any], name: str | None, as_json: bool) -> None:
    """Units, their state and the reconciler's last pass."""
    from .status import collect_status, render_status

    report = collect_status(settings_from(obj))
    if name is not None:
        units = [u for u in report["units"] if u["name"] == name]
        if not units:
            raise UsageError(f"no unit named {name!r}")
        report["units"] = units
    if as_json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        click.echo(render_status(report))


@main.command()
@common_options
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option("--unit", default=None, help="Only events of this unit.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, as stored.")
@click.pass_obj
def events(obj: dict[str, Any], follow: bool, unit: str | None, as_json: bool) -> None:
    """The event log, across rotated files."""
    import orjson

    from .eventlog import follow as follow_events
    from .eventlog import read_events

    path = settings_from(obj).events_path
    stream = follow_events(path, unit=unit, from_start=True) if follow else read_events(path, unit=unit)
    try:
        for event in stream:
            if as_json:
                click.echo(orjson.dumps(event).decode())
            else:
                extra = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("ts", "event", "unit"))
                click.echo(f"{event.get('ts')}  {event.get('event', ''):<24} {event.get('unit', '-'):<16} {extra}".rstrip())
    except BrokenPipeError:
        sys.exit(0)


@main.command()
@common_options
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--allow-insecure-specs", is_flag=True, help="Do not check ownership and permissions.")
@click.pass_obj
def validate(obj: dict[str, Any], paths: tuple[Path, ...], allow_insecure_specs: bool) -> None:
    """Check spec files or directories without touching any process."""
    from .specs import validate_paths

    settings = settings_from(obj, allow_insecure_specs=allow_insecure_specs)
    targets = [p.absolute() for p in paths] or [settings.specs_dir]
    specs, problems = validate_paths(targets, trusted_uids=settings.trusted_uids())
    for problem in problems:
        click.echo(f"{_shown(problem.path)}: {problem.error}", err=True)
    if problems:
        sys.exit(EXIT_ERROR)
    click.echo(f"{len(specs)} spec{'s' if len(specs) != 1 else ''} valid")


@main.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="The actions as JSON.")
@click.pass_obj
def plan(obj: dict[str, Any], as_json: bool) -> None:
    """The actions a pass would take now, changing nothing (exit 2 when changes are pending)."""
    from .status import preview_plan

    actions, problems = preview_plan(settings_from(obj))
    if as_json:
        import orjson

        data = {
            "actions": [{"action": a.kind, "unit": a.unit, "reason": a.reason} for a in actions],
            "invalid_specs": [{"path": p.path, "error": p.error} for p in problems],
        }
        sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        for problem in problems:
            click.echo(f"invalid   {_shown(problem.path)}: {problem.error}")
        for action in actions:
            click.echo(f"{action.kind:<9} {action.unit}: {action.reason}")
        if not actions:
            click.echo("nothing to do")
    sys.exit(EXIT_PENDING if actions else EXIT_OK)


@main.command()
@common_options
@click.argument("name")
@click.pass_obj
def restart(obj: dict[str, Any], name: str) -> None:
    """Request a restart, carried out by the running daemon or the next --once."""
    import uuid

    from .status import request_restart

    holder = request_restart(settings_from(obj), name, uuid.uuid4().hex, time.time())
    where = f"daemon pid {holder}" if holder else "the next pass"
    click.echo(f"restart of {name} requested (carried out by {where})")


@main.command()
@common_options
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output.")
@click.option("--stderr", "use_stderr", is_flag=True, help="Show stderr instead of stdout.")
@click.option("-n", "lines", type=int, default=50, show_default=True, help="Lines to show.")
@click.pass_obj
def logs(obj: dict[str, Any], name: str, follow: bool, use_stderr: bool, lines: int) -> None:
    """The unit's captured output."""
    from .logs import follow as follow_log
    from .logs import log_paths, tail

    out, err = log_paths(settings_from(obj).state_dir, name)
    path = err if use_stderr else out
    if not path.exists():
        raise UsageError(f"no captured output for {name!r} ({path} does not exist)")
    try:
        for line in follow_log(path, lines=lines) if follow else tail(path, lines):
            click.echo(line)
    except BrokenPipeError:
        sys.exit(0)


def _shown(path: str) -> str:
    """Paths below the working directory are shown relative, as the user typed them."""
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:
        return path
