"""Where and when the gRPC server runs: its address (app.grpc, GRPC_PORT), checked when service.py is
imported, and the API worker's start-up and shutdown hooks that start and stop it.

Apart from grpc_inference.py (the servers, with grpcio and the protocol's messages) so that the
processes that import service.py but never serve gRPC, the arbiter and the model runner, do not
import grpcio (~11 MB each): an API worker imports it as it starts its server.
"""

from __future__ import annotations

import os
import socket

import bentoml

from sklearn_service import config, v2_codec


def port(settings: dict) -> int:
    text = os.environ.get("GRPC_PORT") or str(settings["port"])
    value = v2_codec.ascii_int(text, 65535)
    if value is None:
        raise SystemExit(f"error: the gRPC port (GRPC_PORT or app.grpc.port) must be 0-65535, got {text[:40]!r}")
    return value


def address(settings: dict) -> str:
    host = str(settings["host"])
    return f"[{host}]:{port(settings)}" if ":" in host else f"{host}:{port(settings)}"  # IPv6 in brackets


def check_bindable(settings: dict) -> None:
    """Stops the service when the port is taken by another program: found only in a worker, the
    failure would restart that worker forever, HTTP included. Ports held with SO_REUSEPORT by this
    user (the service's other workers) bind; so would another copy of this service's (README)."""
    host, number = str(settings["host"]), port(settings)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, number))
        except OSError as exc:
            raise SystemExit(f"error: the gRPC port {address(settings)} cannot be bound ({exc.strerror}): set "
                             "GRPC_PORT (or app.grpc.port) to a free port, or app.grpc.enabled: false") from None


def hooks(app: dict):
    """The API service's start-up and shutdown hooks: the gRPC server starts with each worker and,
    on shutdown (SIGTERM), takes no new calls and lets those in progress finish (up to
    traffic.timeout seconds, the longest a call may take). A wrong or taken port stops the service here,
    at import."""
    bind = None
    if app["grpc"]["enabled"]:
        check_bindable(app["grpc"])
        bind = address(app["grpc"])

    @bentoml.on_startup
    async def start_grpc(service) -> None:
        service.grpc_server = None
        if bind is not None:
            from sklearn_service import grpc_inference
            service.grpc_server = await grpc_inference.serve(service, app, bind)

    @bentoml.on_shutdown
    async def stop_grpc(service) -> None:
        if getattr(service, "grpc_server", None) is not None:
            grace = float(config.service("SklearnService").get("traffic", {}).get("timeout", 10))
            await service.grpc_server.stop(grace)

    return start_grpc, stop_grpc
