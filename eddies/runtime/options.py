"""Command-line options shared by ``eddies run`` and ``eddies worker``.

The inspector options are checked before the command body runs: a non-loopback ``--bind``
with ``--metrics-port`` and no token is a usage error (exit code 2) that names the CLI
options, raised before the job's module is loaded or any file is created.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from eddies.errors import ConfigError
from eddies.runtime.http import check_exposure

__all__ = ["CLI_TOKEN_FIX", "inspector_options"]

CLI_TOKEN_FIX = ("give --token TOKEN (or set EDDIES_TOKEN; clients then send "
                 "'Authorization: Bearer TOKEN'), or --bind 127.0.0.1")
"""What the CLI tells a user who binds beyond loopback without a token."""


def inspector_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--metrics-port``, ``--bind`` and ``--token``: the live /metrics, /healthz and /state
    server."""

    @functools.wraps(command)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("metrics_port") is not None:
            try:
                check_exposure(kwargs["bind"], kwargs["token"], fix=CLI_TOKEN_FIX)
            except ConfigError as exc:
                raise click.UsageError(str(exc)) from None
        return command(*args, **kwargs)

    for option in reversed([
        click.option("--metrics-port", type=int, default=None,
                     help="Serve /metrics, /healthz and /state on this port while the job "
                          "runs."),
        click.option("--bind", default="127.0.0.1", show_default=True,
                     help="Address of the metrics/inspector server; anything but loopback "
                          "needs --token."),
        click.option("--token", default=None, envvar="EDDIES_TOKEN",
                     help="Bearer token the inspector requires (env EDDIES_TOKEN)."),
    ]):
        checked = option(checked)
    return checked
