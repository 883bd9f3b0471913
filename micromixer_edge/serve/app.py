"""The ASGI app (Starlette): OpenAI-compatible /v1/completions with server-sent events, /v1/models,
/health, /metrics, and a playground page at /. Errors are JSON in OpenAI's error shape."""
from __future__ import annotations

import contextlib
import json
import time
import uuid
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..format import CONTEXT_MODES, MixerError
from ..runtime.engine import GenerateOptions
from ..runtime.model import MixerModel
from .loop import DecodeLoop, QueueFull, ShuttingDown
from .metrics import Metrics
from .settings import Settings

FINISH = {"stop": "stop", "length": "length", "cancelled": "length"}  # OpenAI's finish_reason


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.param, self.headers = status, param, headers


def error(status: int, message: str, param: str | None = None, headers=None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status, headers=headers)


# field -> (types, check, message): the request fields, OpenAI's and llama.cpp's extensions
FIELDS = {
    "max_tokens": (int, lambda v, s: 0 <= v <= s.max_tokens_limit, "an integer from 0 to {limit}"),
    "temperature": ((int, float), lambda v, s: 0 <= v <= 2, "a number from 0 to 2"),
    "top_p": ((int, float), lambda v, s: 0 < v <= 1, "a number in (0, 1]"),
    "top_k": (int, lambda v, s: 0 <= v <= 256, "an integer from 0 to 256"),
    "min_p": ((int, float), lambda v, s: 0 <= v <= 1, "a number from 0 to 1"),
    "repeat_penalty": ((int, float), lambda v, s: 0 < v <= 10, "a number in (0, 10]"),
    "seed": (int, lambda v, s: -2**63 <= v < 2**63, "an integer"),
    "stream": (bool, lambda v, s: True, "true or false"),
    "ignore_eos": (bool, lambda v, s: True, "true or false"),
    "context": (str, lambda v, s: v in CONTEXT_MODES, "one of " + ", ".join(CONTEXT_MODES)),
}


def parse(body: bytes, settings: Settings) -> tuple[str, GenerateOptions, bool, bool]:
    """The request body -> (prompt, options, stream, include_usage); BadRequest on anything else."""
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "the request body is not valid JSON") from None
    if not isinstance(req, dict):
        raise BadRequest(400, "the request body must be a JSON object")
    prompt = req.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest(400, "prompt must be a string", "prompt")
    if len(prompt.encode("utf-8", "surrogatepass")) > settings.max_prompt_bytes:
        raise BadRequest(413, f"the prompt is over --max-prompt-bytes ({settings.max_prompt_bytes})", "prompt")
    for name, (types, ok, what) in FIELDS.items():
        value = req.get(name)
        if value is None:
            continue
        if isinstance(value, bool) and types is not bool or not isinstance(value, types) or not ok(value, settings):
            raise BadRequest(400, f"{name} must be {what.format(limit=settings.max_tokens_limit)}", name)
    stop = req.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise BadRequest(400, "stop must be a string or a list of at most 4 strings", "stop")
    if req.get("n", 1) != 1:
        raise BadRequest(400, "n must be 1", "n")
    sampling = {k: req[f] for k, f in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                                       ("min_p", "min_p"), ("repetition_penalty", "repeat_penalty"),
                                       ("ignore_eos", "ignore_eos"))
                if req.get(f) is not None}
    try:
        options = GenerateOptions.of(max_new_tokens=req.get("max_tokens", 16), seed=req.get("seed"), stop=stop,
                                     context=req.get("context") or "halve", **sampling)
    except MixerError as e:
        raise BadRequest(400, str(e)) from None
    usage = isinstance(req.get("stream_options"), dict) and req["stream_options"].get("include_usage") is True
    return prompt, options, bool(req.get("stream")), usage


class Server:
    """The app's state: one model, one decode loop, the metrics."""

    def __init__(self, settings: Settings):
        self.settings, self.metrics = settings, Metrics()
        self.model = MixerModel(settings.model, settings.threads)
        self.name = self.model.path.stem
        self.loop = DecodeLoop(self.model, settings.max_batch, settings.max_queue, self.metrics)

    def chunk(self, cid: str, created: int, text: str | None, finish: str | None = None, usage=None) -> str:
        """One SSE event in OpenAI's chunk format; text None: the usage-only chunk (no choices)."""
        choices = [] if text is None else [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]
        doc = {"id": cid, "object": "text_completion", "created": created, "model": self.name, "choices": choices}
        if usage is not None:
            doc["usage"] = usage
        return f"data: {json.dumps(doc)}\n\n"

    async def completions(self, request: Request) -> Response:
        try:
            prompt, options, stream, include_usage = parse(await request.body(), self.settings)
            job = self.loop.submit(prompt, options)
        except BadRequest as e:
            self.metrics.requests.labels(outcome=f"error_{e.status}").inc()
            return error(e.status, str(e), e.param)
        except QueueFull:
            self.metrics.requests.labels(outcome="error_429").inc()
            return error(429, "the server is busy: too many queued requests", headers={"Retry-After": "1"})
        except ShuttingDown:
            return error(503, "the server is shutting down")
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if stream:
            return StreamingResponse(self._events(job, cid, created, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        text = []
        try:
            while True:
                item = await job.out.get()
                if item[0] == "piece":
                    text.append(item[1])
                    continue
                _, reason, usage = item
                return JSONResponse({"id": cid, "object": "text_completion", "created": created, "model": self.name,
                                     "choices": [{"text": "".join(text), "index": 0, "logprobs": None,
                                                  "finish_reason": FINISH[reason]}], "usage": usage})
        finally:
            if not job.ended:
                self.loop.cancel(job)

    async def _events(self, job, cid: str, created: int, include_usage: bool):
        """Server-sent events: a chunk per piece, a last chunk with finish_reason, [DONE]. When the
        client goes away, Starlette cancels this generator and the row leaves the step."""
        try:
            while True:
                item, text = await job.out.get(), []
                while item[0] == "piece":  # all the text there is now, as one event
                    text.append(item[1])
                    item = job.out.get_nowait() if not job.out.empty() else None
                    if item is None:
                        break
                if text:
                    yield self.chunk(cid, created, "".join(text), None)
                if item is None:
                    continue
                _, reason, usage = item
                yield self.chunk(cid, created, "", FINISH[reason])
                if include_usage:
                    yield self.chunk(cid, created, None, usage=usage)
                yield "data: [DONE]\n\n"
                return
        finally:
            if not job.ended:
                self.loop.cancel(job)

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model", "created": 0,
                                                         "owned_by": "micromixer-edge", "meta": self.model.meta}]})

    async def health(self, request: Request) -> Response:
        active, queued = self.loop.counts()
        return JSONResponse({"status": "ok" if self.loop.accepting else "stopping", "active_rows": active,
                             "queued_requests": queued, "model": self.name})

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.text(), media_type="text/plain; version=0.0.4")

    async def playground(self, request: Request) -> Response:
        page = (resources.files("micromixer_edge.serve") / "static" / "index.html").read_text()
        return HTMLResponse(page.replace("@MODEL@", self.name))


def create_app(settings: Settings) -> Starlette:
    server = Server(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.loop.start()
        yield
        server.loop.stop()

    async def http_error(request: Request, exc: HTTPException) -> Response:
        messages = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)), headers=exc.headers)

    routes = [Route("/v1/completions", server.completions, methods=["POST"]),
              Route("/v1/models", server.models, methods=["GET"]),
              Route("/health", server.health, methods=["GET"]),
              Route("/metrics", server.metrics_text, methods=["GET"]),
              Route("/", server.playground, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.server = server
    return app
