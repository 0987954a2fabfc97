"""The Open Inference Protocol over gRPC: inference.GRPCInferenceService, grpc.health.v1.Health and reflection.

One grpc.aio server per API worker, in the worker's event loop, started and
stopped by the service's lifecycle hooks (grpc_lifecycle.py); the workers share the port
through SO_REUSEPORT, so the kernel spreads connections across them. A thin
adapter, as open_inference.py is for REST: grpc_codec reads the messages into
v2_codec's terms, and each ModelInfer takes the model's PredictionCore (the
same validation, coalescing, limits, metrics, payload log and drift as HTTP).

Refusals carry the REST message, with the status as a gRPC code (STATUS_CODES).
The API key is the HTTP one, sent as `authorization: Bearer <key>` metadata;
liveness, readiness, health and reflection stay open, as the HTTP probes do.
Messages larger than app.max_body_bytes are refused by gRPC (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import hmac
import logging

import bentoml
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from sklearn_service import config, grpc_codec, v2_codec
from sklearn_service.errors import RequestError
from sklearn_service.middleware import configured_api_key
from sklearn_service.open_inference import model_outputs, runner_ready, unknown_model
from sklearn_service.prediction_core import EXPLANATION, PredictionCore
from sklearn_service.v2_grpc import open_inference_grpc_pb2 as pb
from sklearn_service.v2_grpc import open_inference_grpc_pb2_grpc as pb_grpc

logger = logging.getLogger("sklearn_service")

ENDPOINT = "grpc:ModelInfer"  # the metrics label of every gRPC inference request
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
LIVENESS = "liveness"  # the health service name that answers as /livez
# HTTP statuses of RequestError as gRPC codes (gRPC's own for an oversized message: RESOURCE_EXHAUSTED)
STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE,
                504: grpc.StatusCode.DEADLINE_EXCEEDED}
# open without a key, as /livez, /readyz and /v2/health/* are over HTTP
OPEN_METHODS = frozenset({f"/{SERVICE}/ServerLive", f"/{SERVICE}/ServerReady", f"/{HEALTH}/Check",
                          f"/{HEALTH}/Watch", f"/{HEALTH}/List",
                          f"/{reflection.SERVICE_NAME}/ServerReflectionInfo"})

# Reflection describes what the private descriptor pool holds (see v2_grpc/generate.sh): the protocol's
# messages, and the health and reflection services beside them.
for _file in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
    pb.POOL.AddSerializedFile(_file.serialized_pb)


async def abort(context: grpc.aio.ServicerContext, exc: RequestError):
    """Ends the call with the refusal's code and message; a retry hint (503) goes in trailing metadata."""
    trailing = tuple((key.lower(), value) for key, value in (exc.headers or {}).items() if key.lower() == "retry-after")
    await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), str(exc),
                        trailing_metadata=(("reason", exc.reason), *trailing))


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service):
        self.service = service

    def _model(self, name: str, version: str) -> PredictionCore | None:
        return self.service.model(name, version or None)  # proto3: an empty version is none

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.service.__is_alive__())

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=await runner_ready(self.service.runner))

    async def ModelReady(self, request, context):
        if self._model(request.name, request.version) is None:
            await abort(context, unknown_model(request.name, request.version or None))
        return pb.ModelReadyResponse(ready=await runner_ready(self.service.runner))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="sklearn-service", version=bentoml.__version__,
                                         extensions=["binary_tensor_data"])

    async def ModelMetadata(self, request, context):
        core = self._model(request.name, request.version)
        if core is None:
            await abort(context, unknown_model(request.name, request.version or None))
        return pb.ModelMetadataResponse(
            name=core.name, versions=[core.version], platform="scikit-learn",
            inputs=grpc_codec.tensor_metadata(v2_codec.model_inputs(core.signature)),
            outputs=grpc_codec.tensor_metadata(model_outputs(core)))

    async def ModelInfer(self, request, context):
        core = self._model(request.model_name, request.model_version)
        if core is None:
            await abort(context, unknown_model(request.model_name, request.model_version or None))
        try:
            try:
                inference, raw = grpc_codec.decode_request(request, core.outputs, named_only=(EXPLANATION,))
                rows = v2_codec.rows(inference, core.signature)
            except RequestError as exc:
                raise core.refuse(ENDPOINT, exc, grpc_codec.received_rows(request)) from None
            answer = await core.answer(ENDPOINT, rows, outputs=inference.outputs)
        except RequestError as exc:
            refusal = exc
        else:
            tensors = v2_codec.output_tensors(inference.outputs, answer.predictions, answer.outputs, core.labels)
            return grpc_codec.encode_response(core.name, core.version, inference.id, tensors, raw)
        await abort(context, refusal)


class HealthServicer(health_pb2_grpc.HealthServicer):
    """grpc.health.v1, for Kubernetes' gRPC probes and grpc_health_probe: the server ("") and the
    inference service are SERVING while the runner is ready, as /readyz; "liveness" while the
    service is alive, as /livez (a probe names it in its `service` field)."""

    def __init__(self, service):
        self.service = service

    async def Check(self, request, context):
        if request.service == LIVENESS:
            up = self.service.__is_alive__()
        elif request.service in ("", SERVICE):
            up = await runner_ready(self.service.runner)
        else:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:100]!r}")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING if up
                                              else health_pb2.HealthCheckResponse.NOT_SERVING)


class ApiKey(grpc.aio.ServerInterceptor):
    """`authorization: Bearer <key>` metadata on every method but OPEN_METHODS; the scheme name is
    case-insensitive and the key compared in constant time, as ApiKeyAuth does over HTTP."""

    def __init__(self, key: str):
        self.expected = key.encode()

    async def intercept_service(self, continuation, details):
        if details.method in OPEN_METHODS:
            return await continuation(details)
        given = [value for key, value in details.invocation_metadata or () if key == "authorization"]
        if len(given) > 1:
            return _refusal(grpc.StatusCode.INVALID_ARGUMENT, "send one authorization header, not several")
        scheme, _, key = (given[0] if given else "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.expected):
            return await continuation(details)
        return _refusal(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key: send 'authorization: Bearer <key>'")


def _refusal(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def refuse(request, context):
        await context.abort(code, message)
    # every method here is unary-unary; the request is not even parsed
    return grpc.unary_unary_rpc_method_handler(refuse)


async def serve(service, app: dict, bind: str) -> grpc.aio.Server:
    """Starts a gRPC server for `service` (the API service's instance) in the running event loop."""
    traffic = config.service("SklearnService").get("traffic", {})
    key = configured_api_key(app)
    server = grpc.aio.server(
        interceptors=[ApiKey(key)] if key else [],
        # beyond this many calls in progress gRPC refuses more (RESOURCE_EXHAUSTED), as HTTP does (429)
        maximum_concurrent_rpcs=traffic.get("max_concurrency"),
        options=[("grpc.max_receive_message_length", int(app["max_body_bytes"])),
                 ("grpc.so_reuseport", 1)])  # several workers, one port
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(service), server)
    reflection.enable_server_reflection((SERVICE, HEALTH, reflection.SERVICE_NAME), server, pool=pb.POOL)
    server.add_insecure_port(bind)  # raises when the address cannot be bound
    await server.start()
    logger.info("Open Inference Protocol over gRPC on %s", bind)
    return server
