"""The ASGI app (Starlette): OpenAI-compatible /v1/completions with server-sent events, /v1/models,
/health, /metrics, and a playground page at /. Errors are JSON in OpenAI's error shape."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import time
import uuid
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import BadRequest, MixerError, QueueFull, ShuttingDown
from ..runtime import snapshot
from ..runtime.context import context_mode
from ..format import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE
from ..runtime.logprobs import token_text
from .access import USAGE, AccessLog, LineWriter
from .answer import BLOCK, CHAT, HELD, HOLD_SECONDS, TEXT, Budget, ReleaseAnswers, Shape, dumps, paced, usage
from ..runtime.engine import Engine, Finish
from ..runtime.model import MixerModel
from ..runtime.prompt_cache import PromptCache
from .auth import RequireKey, read_api_key, read_state_key
from .chat import ChatTemplate
from .fields import chat_messages, chat_request, parse_completion, parse_detokenize, parse_tokenize, tokens
from .loop import DecodeLoop, End, Piece
from .metrics import Metrics
from .settings import Settings

FINISH = {Finish.STOP: "stop", Finish.LENGTH: "length"}  # OpenAI's finish_reason for a row that ran its course
# A row that did not: the error a client gets (status when nothing was sent yet, code, message)
CUT = {Finish.ERROR: (500, "internal_error", "generation failed: {}"),
       Finish.CONSTRAINT: (400, "constraint_failed", "the constraint failed while generating: {}"),
       Finish.SHUTDOWN: (503, "shutdown", "the server shut down before the completion ended")}


def _param(end: End, req) -> str | None:
    """The field at fault for a cut row: the constraint's, when it was the constraint."""
    return req.constrained_by if end.reason == Finish.CONSTRAINT else None


def error(status: int, message: str, param: str | None = None, headers=None, code=None) -> JSONResponse:
    return JSONResponse(error_doc(status, message, param, code), status_code=status, headers=headers)


def error_doc(status: int, message: str, param: str | None = None, code=None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def _result(job) -> tuple[str, list, End]:
    """A job's whole text, its logprob entries and its End, once it is done."""
    text, entries = [], []
    while True:
        item = await job.out.get()
        if isinstance(item, End):
            return "".join(text), entries, item
        text.append(item.text)
        entries += item.entries


async def _pump(index: int, job, merged: asyncio.Queue) -> None:
    """Forward a job's items to a request's merged queue: the text there is now as one piece, of
    at most BLOCK logprob entries (so that a chunk a slow client left to pile up costs no more)."""
    while True:
        item, text, entries = await job.out.get(), [], []
        while isinstance(item, Piece):
            text.append(item.text)
            entries += item.entries
            more = len(entries) < BLOCK and not job.out.empty()
            item = job.out.get_nowait() if more else None
        # at most BLOCK entries a chunk (the echo of a long prompt comes as one item): the text
        # goes with the first, the rest of its entries follow in chunks of their own
        starts = range(0, max(len(entries), 1), BLOCK) if text or entries else ()
        for at in starts:
            merged.put_nowait((index, Piece("".join(text) if at == 0 else "", entries[at:at + BLOCK])))
        if item is not None:
            merged.put_nowait((index, item))
            return


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body was read already: the next message is the
    disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Service:
    """The app's state: one model, one decode loop, the metrics."""

    def __init__(self, settings: Settings, on_death=None):
        self.settings, self.metrics = settings, Metrics()
        self.model = MixerModel(settings.model, settings.threads)
        self.name = self.model.path.stem
        cache = PromptCache(int(settings.prompt_cache_mb * 2**20), salt=self.model.sha256) \
            if settings.prompt_cache_mb > 0 else None
        self.loop = DecodeLoop(Engine(self.model, cache, settings.constraint_mask_ms / 1000), settings.max_batch, settings.max_queue, self.metrics,
                               on_death)
        self.answers = Budget(int(settings.answers_in_flight_mb * 2**20))
        self.lane = asyncio.Lock()  # whole answers encode one at a time (answer.paced), on this app's loop
        # constraints compile one at a time in a thread of their own (llguidance releases the GIL);
        # the next starts when the last has ended, even one whose request timed out
        self.compiler = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="constraint")
        self.compiling = asyncio.Semaphore(1)
        self.template = ChatTemplate.from_file(settings.chat_template, settings.template_seconds,
                                               settings.max_prompt_bytes)
        self.state_key = read_state_key(settings.state_key_file)

    def chunk(self, shape: "Shape", cid: str, created: int, index: int | None, text: str = "",
              finish: str | None = None, usage=None, first: bool = False, logprobs: dict | None = None,
              state: bytes | None = None) -> str:
        """One SSE event in OpenAI's chunk format; index None: the usage-only chunk (no choices)."""
        choices = [] if index is None else [shape.piece(index, text, finish, first, logprobs)]
        if state is not None:  # (the choice's last chunk, when the request asked: return_state)
            choices[0]["state"] = snapshot.to_text(state, self.state_key, self._domain(shape))
        doc = {"id": cid, "object": shape.chunk_object, "created": created, "model": self.name, "choices": choices}
        if usage is not None:
            doc["usage"] = usage
        return f"data: {dumps(doc)}\n\n"

    async def body(self, request: Request) -> bytes:
        """The request body, at most settings.max_body_bytes (its time limit is the protocol's:
        serve/http.py closes a request that has not arrived whole within --timeout-seconds). JSON
        only: a page on another site can POST text/plain without asking (no CORS preflight)."""
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if kind != "application/json" and not kind.endswith("+json"):
            raise BadRequest(415, f"the body must be JSON (Content-Type: application/json), not {kind!r}")
        limit, length = self.settings.max_body_bytes, request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise BadRequest(413, f"the request body is over {limit} bytes")
        data = bytearray()
        try:
            async for chunk in request.stream():
                data.extend(chunk)
                if len(data) > limit:
                    raise BadRequest(413, f"the request body is over {limit} bytes")
        except ClientDisconnect:
            raise BadRequest(400, "the client went away before its request body ended") from None
        return bytes(data)

    async def completions(self, request: Request) -> Response:
        async def parse(body: bytes):
            return parse_completion(body, self.settings)
        return await self._answer(request, TEXT, parse)

    async def chat(self, request: Request) -> Response:
        async def parse(body: bytes):
            req, messages = chat_messages(body)
            if req.get("state") is None:
                return chat_request(req, await self.template.render(messages), self.settings)
            return chat_request(req, await self.template.continuation(messages), self.settings)
        return await self._answer(request, CHAT, parse)

    async def _answer(self, request: Request, shape: "Shape", parse) -> Response:
        """Parse, hold the answer's share of --answers-in-flight-mb, queue, then stream or answer
        whole, in the endpoint's shape."""
        try:
            req = await parse(await self.body(request))
            req, resume = self._resume(req)
            if req.options.constraint is not None:
                await self._compile(req)
            if not self.answers.take(req.answer_bytes):
                raise QueueFull(f"the server is busy: the answers in flight could hold "
                                f"{self.answers.held / 2**20:.1f} MB (--answers-in-flight-mb "
                                f"{self.settings.answers_in_flight_mb:g})")
            request.scope.setdefault("state", {})[HELD] = req.answer_bytes  # given back once the response is out
            jobs = self.loop.submit(req.choices(), resume, req.return_state)
        except BadRequest as e:
            self.metrics.requests.labels(outcome=f"error_{e.status}").inc()
            # a body not read to its end leaves the connection unusable: close it
            headers = {"Connection": "close"} if e.status == 413 else None
            return error(e.status, str(e), e.param, headers)
        except QueueFull as e:
            self.metrics.requests.labels(outcome="error_429").inc()
            return error(429, str(e) or "the server is busy: too many queued requests", headers={"Retry-After": "1"})
        except ShuttingDown:
            return error(503, "the server is shutting down" if self.loop.dead is None else "the server failed")
        cid, created = f"{shape.id_prefix}{uuid.uuid4().hex[:24]}", int(time.time())
        if req.stream:
            return StreamingResponse(self._events(shape, req, jobs, cid, created, request.scope["state"]),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            return await self._whole(shape, req, request, jobs, cid, created)
        finally:
            self._cancel_open(jobs)

    def _domain(self, what) -> str:
        """What a state's signature covers besides its bytes: the endpoint, and for chat the
        template (a completions state, or another template's, must not continue a chat)."""
        return f"chat:{self.template.sha256}" if getattr(what, "chat", False) else "text"

    def _resume(self, req):
        """(the request, the state it continues or None): the state text checked (signature,
        then the snapshot: readable, safe, this model's) and its context mode the request's; a
        400 naming `state` for anything else."""
        if req.state is None:
            return req, None
        try:
            s = self.loop.engine.read(snapshot.from_text(req.state, self.state_key, self._domain(req)), old=False)
            context_mode(s.context)
        except (MixerError, ValueError) as e:
            self.metrics.states.labels(event="refused").inc()
            text = str(e)
            raise BadRequest(400, f"state {text}" if text.startswith(("is ", "has ", "must ")) else f"state: {text}",
                             "state") from None
        if req.asked_context not in (None, s.context):
            self.metrics.states.labels(event="refused").inc()
            raise BadRequest(400, f"state: it was made in {s.context} mode, and the request asks for "
                                  f"{req.asked_context}; leave context out (the state's mode wins)", "context")
        self.metrics.states.labels(event="resumed").inc()
        return dataclasses.replace(req, options=dataclasses.replace(req.options, context=s.context)), s

    async def _compile(self, req) -> None:
        """Compile the request's constraint off the decode thread, within --constraint-seconds of
        its arrival (waiting for the compile thread included): a 400 naming the field if it is
        invalid or too slow, a 429 if the thread stays busy with others that long."""
        field, seconds = req.constrained_by, self.settings.constraint_seconds
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            await asyncio.wait_for(self.compiling.acquire(), seconds)
        except asyncio.TimeoutError:
            raise QueueFull(f"the server is busy compiling other constraints (--constraint-seconds "
                            f"{seconds:g}); try again") from None
        job = loop.run_in_executor(self.compiler, req.options.constraint.compile)
        job.add_done_callback(self._compiled)
        try:
            await asyncio.wait_for(asyncio.shield(job), max(deadline - loop.time(), 0.001))
        except asyncio.TimeoutError:
            raise BadRequest(400, f"{field}: the constraint did not compile within {seconds:g} s "
                                  f"(--constraint-seconds); simplify it", field) from None
        except MixerError as e:
            raise BadRequest(400, f"{field}: {e}", field) from None

    def _compiled(self, job: asyncio.Future) -> None:
        self.compiling.release()
        if not job.cancelled():
            job.exception()  # (retrieved: one that timed out may fail later, unheard)

    def _cancel_open(self, jobs) -> None:
        for job in jobs:
            if not job.ended:
                self.loop.cancel(job)

    async def _whole(self, shape: "Shape", req, request: Request, jobs, cid: str, created: int) -> Response:
        """A non-streaming answer, every choice whole; a client that goes away meanwhile frees its
        rows at once."""
        gone = asyncio.ensure_future(_disconnected(request))
        results = [asyncio.ensure_future(_result(job)) for job in jobs]
        try:
            while not all(r.done() for r in results):
                await asyncio.wait([gone, *results], return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    return Response(status_code=499)  # nobody reads it: the caller cancels the rows
            choices, k = [], req.options.logprobs
            for index, (text, entries, end) in enumerate(r.result() for r in results):
                if end.reason in CUT:
                    status, code, message = CUT[end.reason]
                    return error(status, message.format(end.error), _param(end, req), code=code)
                choices.append(shape.whole(index, req.prompt_text(index) + text, FINISH[end.reason],
                                           shape.logprobs(entries, k)))
                if end.state is not None:
                    choices[-1]["state"] = snapshot.to_text(end.state, self.state_key, self._domain(shape))
            total = request.scope["state"][USAGE] = usage([r.result()[2].stats for r in results])
            doc = {"id": cid, "object": shape.whole_object, "created": created, "model": self.name,
                   "choices": choices, "usage": total}
            return StreamingResponse(paced(doc, self.lane), media_type="application/json")  # in pieces: the loop stays free
        finally:
            gone.cancel()
            for r in results:
                r.cancel()

    async def _events(self, shape: "Shape", req, jobs, cid: str, created: int, state: dict):
        """Server-sent events: chunks of each choice's text as it comes (index = the choice; with
        echo, its first chunk begins with the prompt), a chunk with each choice's finish_reason,
        the usage chunk if asked, then [DONE]. A choice cut short (an error, shutdown) ends the
        stream with an error event instead. When the client goes away, Starlette cancels this
        generator and the rows leave the step."""
        merged: asyncio.Queue = asyncio.Queue()
        pumps = [asyncio.ensure_future(_pump(i, job, merged)) for i, job in enumerate(jobs)]
        first, ended, since = [True] * len(jobs), [], time.perf_counter()
        try:
            while len(ended) < len(jobs):
                if time.perf_counter() - since > HOLD_SECONDS:  # a backlog: the other requests get a turn
                    await asyncio.sleep(0)
                    since = time.perf_counter()
                index, item = await merged.get()
                echo = req.prompt_text(index) if first[index] else ""
                if isinstance(item, Piece):
                    logprobs = shape.logprobs(item.entries, req.options.logprobs)
                    if shape.chat and not item.text and not (logprobs and logprobs["content"].items):
                        continue  # (chat's eos entry alone: nothing to send)
                    yield self.chunk(shape, cid, created, index, echo + item.text, first=first[index], logprobs=logprobs)
                    first[index] = False
                    continue
                if item.reason in CUT:
                    status, code, message = CUT[item.reason]
                    doc = error_doc(status, message.format(item.error), _param(item, req), code=code)
                    yield f"data: {json.dumps(doc)}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                yield self.chunk(shape, cid, created, index, echo, FINISH[item.reason], first=first[index],
                                 state=item.state)
                ended.append(item.stats)
                state[USAGE] = usage(ended)  # (the access log's counts)
            if req.include_usage:
                yield self.chunk(shape, cid, created, None, usage=usage(ended))
            yield "data: [DONE]\n\n"
        finally:
            for p in pumps:
                p.cancel()
            self._cancel_open(jobs)

    def model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "micromixer-edge",
                "meta": self.model.meta}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def one_model(self, request: Request) -> Response:
        """GET /v1/models/{id}: this server's one model, or 404."""
        if request.path_params["model"] != self.name:
            return error(404, f"no model {request.path_params['model']!r}; this server has {self.name!r}",
                         "model", code="model_not_found")
        return JSONResponse(self.model_card())

    # --- the tokenizer, as vLLM's server gives it (lm-eval's remote tokenizer reads these) -------
    async def tokenizer_info(self, request: Request) -> Response:
        """Bytes are the tokens: ids 0-255, three of them special (docs/server.md)."""
        return JSONResponse({"tokenizer_class": "ByteTokenizer", "vocab_size": VOCAB_SIZE,
                             "model_max_length": self.model.max_seq_len, "add_bos_token": True,
                             "pad_token": chr(PAD_ID), "bos_token": chr(BOS_ID), "eos_token": chr(EOS_ID),
                             "chat_template": self.template.source})

    async def tokenize(self, request: Request) -> Response:
        try:
            prompt = parse_tokenize(await self.body(request))
            prompt = prompt if isinstance(prompt, str) else await self.template.render(prompt)
            data = tokens(prompt, self.settings)
        except BadRequest as e:
            return error(e.status, str(e), e.param)
        return JSONResponse({"count": len(data), "max_model_len": self.model.max_seq_len, "tokens": list(data),
                             "token_strs": [token_text(b) for b in data]})

    async def detokenize(self, request: Request) -> Response:
        try:
            data = parse_detokenize(await self.body(request))
        except BadRequest as e:
            return error(e.status, str(e), e.param)
        return JSONResponse({"prompt": data.decode("utf-8", "replace")})

    async def health(self, request: Request) -> Response:
        """200 while serving; 503 while stopping, or when the decode loop has died (the process
        then exits non-zero)."""
        active, queued = self.loop.counts()
        status = "ok" if self.loop.accepting else "stopping" if self.loop.dead is None else "failed"
        doc = {"status": status, "active_rows": active, "queued_requests": queued, "model": self.name}
        if self.loop.dead is not None:
            doc["error"] = self.loop.dead
        return JSONResponse(doc, status_code=200 if status == "ok" else 503)

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.text(), media_type="text/plain; version=0.0.4")

    async def playground(self, request: Request) -> Response:
        page = (resources.files("micromixer_edge.serve") / "static" / "index.html").read_text()
        return HTMLResponse(page.replace("@MODEL@", self.name))


# (method, path, Service method): docs/server.md's route table is checked against it
ROUTES = (("POST", "/v1/completions", "completions"),
          ("POST", "/v1/chat/completions", "chat"),
          ("GET", "/v1/models", "models"),
          ("GET", "/v1/models/{model:path}", "one_model"),
          ("GET", "/tokenizer_info", "tokenizer_info"),
          ("POST", "/tokenize", "tokenize"),
          ("POST", "/detokenize", "detokenize"),
          ("GET", "/health", "health"),
          ("GET", "/metrics", "metrics_text"),
          ("GET", "/", "playground"))


class JSONCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, its refused preflight (400) in JSON like every other error."""

    def preflight_response(self, request_headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return error(response.status_code, response.body.decode(), headers=headers, code="cors_refused")


def create_app(settings: Settings, on_death=None) -> Starlette:
    """The app; `on_death` is called (from the decode thread) if that thread dies."""
    server = Service(settings, on_death)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.loop.start()
        yield
        server.template.close()  # (first: a render in flight ends now)
        server.loop.stop()

    async def http_error(request: Request, exc: HTTPException) -> Response:
        messages = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)), headers=exc.headers)

    async def crash(request: Request, exc: Exception) -> Response:  # a bug: still JSON, still serving
        return error(500, f"internal error: {type(exc).__name__}")

    routes = [Route(path, getattr(server, name), methods=[method]) for method, path, name in ROUTES]
    key = read_api_key(settings.api_key, settings.api_key_file)
    log = LineWriter() if settings.access_log else None
    middleware = ([Middleware(AccessLog, writer=log)] if log else []) + [Middleware(ReleaseAnswers, budget=server.answers)]
    middleware += [Middleware(JSONCORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                              allow_headers=["*"])  # (OpenAI's JS client sends its own x-stainless-* headers)
                   for origins in [[o.strip() for o in settings.cors_origins.split(",") if o.strip()]] if origins]
    if key is not None:  # inside CORS: a preflight (OPTIONS, no credentials) is answered before it
        middleware.append(Middleware(RequireKey, key=key, unauthorized=lambda: error(
            401, "a valid API key is needed: send 'Authorization: Bearer KEY'", code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"})))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers={HTTPException: http_error, Exception: crash})
    app.state.server, app.state.access_log = server, log
    return app
