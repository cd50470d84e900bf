"""Command-line options shared by ``eddies run`` and ``eddies worker``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

__all__ = ["inspector_options"]


def inspector_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--metrics-port``, ``--bind`` and ``--token``: the live /metrics and /state server."""
    for option in reversed([
        click.option("--metrics-port", type=int, default=None,
                     help="Serve /metrics and /state on this port while the job runs."),
        click.option("--bind", default="127.0.0.1", show_default=True,
                     help="Address of the metrics/inspector server; anything but loopback "
                          "needs --token."),
        click.option("--token", default=None, envvar="EDDIES_TOKEN",
                     help="Bearer token the inspector requires (env EDDIES_TOKEN)."),
    ]):
        command = option(command)
    return command
