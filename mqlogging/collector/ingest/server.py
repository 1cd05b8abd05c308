"""The ingest server as a :class:`~mqlogging.backends.base.Consumer` of the collector pipeline.

The seam: the pipeline does not know it is fed by HTTP. Its worker calls :meth:`fetch`,
which returns the records of pending requests as deliveries; the worker writes them to the
sinks and calls :meth:`ack` once every sink has a record (for a ``broker`` sink: once the
broker confirmed it), :meth:`nack` when it gives a record back. A request is answered when
all its records are settled:

====================================  ========================================================
every record acked                    ``200 {"accepted": N}``
some lines refused, the rest acked    ``400 {"accepted": N, "errors": [{"line", "error"}]}``
a record nacked, or ``timeout``       ``503`` with ``Retry-After`` (send the request again)
====================================  ========================================================

So 2xx means the records are durably handed on, never less. (A record the pipeline
dead-letters — larger than ``max_message_bytes``, nested too deeply, or refused by a sink for
its content — counts as handed on once its dead letter is confirmed, as for every source.)

Other answers: ``401`` (no or unknown token, no certificate) with ``WWW-Authenticate: Bearer``;
``403`` (a certificate whose subject is not in ``allowed_subjects``, or that is revoked:
``crl_check``, :mod:`~mqlogging.collector.ingest.crl`); ``404``/``405`` (wrong
path or method, from aiohttp); ``413`` (body above ``max_body_bytes``, before or after gzip,
or more than ``max_records`` records);
``415`` (a ``Content-Encoding`` other than gzip/identity); ``408`` (the body did not arrive
within ``body_timeout``; the connection is closed); ``429`` with ``Retry-After`` when
``max_inflight_bytes`` of records already wait to be handed on (the broker or the sinks are
slow: backpressure).

Retries do not duplicate: a record whose id is already waiting (the client's earlier attempt
timed out while the broker was down) is not queued again; the new request waits for the same
record. A record whose id was handed on lately (the last ``remember_ids`` ids) counts as done
at once: a client resending a batch that was partly published before a 503 does not publish
those records twice. (Past that window a resent record is published again; the id keeps
Elasticsearch from storing it twice.)

HTTP stack: aiohttp's server (``aiohttp.web``): maintained, asyncio-native (thousands of
pilots keep connections open cheaply in one thread), exposes the TLS object for the
verified client chain, and lets us switch off its own request decompression so our bounded
:func:`~mqlogging.collector.ingest.body.gunzip` is the only inflater. It runs its event loop
in one daemon thread; the consumer's methods are called by the pipeline worker thread, and
the two meet only in :class:`_Queue` (a lock and a condition variable) and
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..._json import dumps
from ..._types import Delivery
from ...backends.base import Consumer
from ...errors import ConnectError, MissingDependencyError
from .auth import certificate_identity, server_context, verified_chain
from .body import BadEncoding, Parsed, TooLarge, TooMany, gunzip, parse_body

if TYPE_CHECKING:
    from aiohttp import web

    from .config import HttpSourceConfig

__all__ = ["IngestConsumer"]

log = logging.getLogger("mqlogging.collector.ingest")


@dataclass(eq=False)
class _Request:
    """One pending request: how many of its records are not yet acked, and its answer."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[bool]
    remaining: int

    def settle(self, ok: bool) -> None:
        """Count one record settled (``ok``) or fail the request; thread-safe via the loop."""
        if not ok:
            self.remaining = -1
            self.answer(False)
        elif self.remaining > 0:
            self.remaining -= 1
            if self.remaining == 0:
                self.answer(True)

    def answer(self, ok: bool) -> None:
        """Resolve the request's future from any thread (once; later calls do nothing)."""
        with contextlib.suppress(RuntimeError):  # the server loop is gone: nobody waits
            self.loop.call_soon_threadsafe(_resolve, self.future, ok)


def _resolve(future: asyncio.Future[bool], ok: bool) -> None:
    if not future.done():
        future.set_result(ok)


@dataclass(eq=False)
class _Slot:
    """One record waiting to be handed on, and every request waiting for it."""

    id: str
    body: bytes
    waiters: list[_Request] = field(default_factory=list)
    taken: bool = False


class _Queue:
    """Records between the server thread and the pipeline worker; bounded in bytes."""

    def __init__(self, max_bytes: int, remember: int) -> None:
        self.max_bytes = max_bytes
        self.remember = remember
        self._done: OrderedDict[str, None] = OrderedDict()  # ids handed on lately, oldest first
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._waiting: deque[_Slot] = deque()  # not yet fetched
        self._by_id: dict[str, _Slot] = {}  # every slot not yet settled
        self._bytes = 0

    def offer(self, records: list[tuple[str, bytes]], request: _Request) -> bool:
        """Queue ``records`` for ``request``: an id handed on recently counts as done at
        once, an id already waiting is joined (not queued twice); False, nothing queued, when
        the new bytes do not fit. Sets ``request.remaining`` to the records it waits for."""
        with self._lock:
            todo = {rid: body for rid, body in records if rid not in self._done}
            size = sum(len(body) for rid, body in todo.items() if rid not in self._by_id)
            if self._bytes and self._bytes + size > self.max_bytes:
                return False
            request.remaining = len(todo)
            for rid, body in todo.items():
                slot = self._by_id.get(rid)
                if slot is None:
                    slot = self._by_id[rid] = _Slot(rid, body)
                    self._waiting.append(slot)
                    self._bytes += len(body)
                slot.waiters.append(request)
            self._ready.notify()
        if not todo:
            request.answer(True)
        return True

    def take(self, max_messages: int, timeout: float) -> list[_Slot]:
        with self._lock:
            if not self._waiting and max_messages > 0:
                self._ready.wait(timeout)
            out: list[_Slot] = []
            while self._waiting and len(out) < max_messages:
                slot = self._waiting.popleft()
                slot.taken = True
                out.append(slot)
            return out

    def settle(self, slots: Sequence[_Slot], ok: bool) -> None:
        with self._lock:
            for slot in slots:
                if self._by_id.get(slot.id) is slot:
                    del self._by_id[slot.id]
                    self._bytes -= len(slot.body)
                if ok:
                    self._done[slot.id] = None
            while len(self._done) > self.remember:
                self._done.popitem(last=False)
            waiters = [w for slot in slots for w in slot.waiters]
        for waiter in waiters:
            waiter.settle(ok)

    def forget(self, request: _Request) -> None:
        """Drop ``request``'s records that no pipeline worker took yet and nobody else waits
        for (it timed out: the client sends them again)."""
        with self._lock:
            keep: deque[_Slot] = deque()
            for slot in self._waiting:
                if request in slot.waiters:
                    slot.waiters.remove(request)
                if slot.waiters:
                    keep.append(slot)
                else:
                    del self._by_id[slot.id]
                    self._bytes -= len(slot.body)
            self._waiting = keep

    def fail_all(self) -> None:
        """Fail every request still waiting (the source closes); forget every record."""
        with self._lock:
            slots = list(self._by_id.values())
            self._by_id.clear()
            self._waiting.clear()
            self._bytes = 0
            self._ready.notify_all()
        for waiter in {id(w): w for s in slots for w in s.waiters}.values():
            waiter.settle(False)


class IngestConsumer(Consumer):
    """Serves ``POST <path>`` and hands the records to the pipeline (module docstring)."""

    def __init__(
        self, config: HttpSourceConfig, answered: Callable[[int], None] | None = None
    ) -> None:
        self.config = config
        self._answered = answered
        self._queue = _Queue(config.max_inflight_bytes, config.remember_ids)
        self._tokens = config.tokens()
        self._tokens.check()
        self._crls = config.crls()
        self._crls.check()
        if config.client_ca and not self._crls.enabled:
            log.warning("ingest %s: client certificates are accepted without CRL checks "
                        "(crl_check = 'off'): revoked ones too", config.label)  # fmt: skip
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._reading = 0  # body bytes reserved by requests being read (event-loop thread)

    # -- Consumer ---------------------------------------------------------------------------

    def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Records of pending requests, up to ``max_messages``, waiting at most ``timeout``."""
        self._ensure_serving()
        slots = self._queue.take(max_messages, timeout)
        return [Delivery(s.id, s.body, s) for s in slots]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._queue.settle([d.tag for d in deliveries], True)

    def nack(self, deliveries: Sequence[Delivery], *, requeue: bool = True) -> None:
        """The pipeline gives records back: their requests get 503 (the client resends)."""
        self._queue.settle([d.tag for d in deliveries], False)

    def set_window(self, max_messages: int) -> int:
        return self.config.prefetch

    def close(self) -> None:
        """Answer every waiting request 503 (nothing of theirs was handed on that will not be
        acked by then), stop listening, end the server thread. Idempotent."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        self._queue.fail_all()
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            done = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):
                done.result(10.0)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)

    # -- the server thread ----------------------------------------------------------------------

    def _ensure_serving(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._started.clear()
        self._start_error = None
        self._thread = threading.Thread(
            target=self._serve, name=f"mqlogging-ingest[{self.config.label}]", daemon=True
        )
        self._thread.start()
        self._started.wait(15.0)
        if self._start_error is not None:
            error, self._start_error = self._start_error, None
            msg = f"ingest cannot listen on {self.config.listen}: {error}"
            raise ConnectError(msg, endpoint=self.config.label) from error

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start_site())
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _start_site(self) -> None:
        try:
            from aiohttp import web
        except ImportError as exc:  # pragma: no cover - installed with the collector extra
            raise MissingDependencyError("aiohttp", "collector") from exc
        cfg = self.config
        app = web.Application(client_max_size=cfg.max_body_bytes)
        app.router.add_post(cfg.path, self._counted)
        # Our bounded gunzip is the only inflater (a bomb must stop at max_body_bytes).
        runner = web.AppRunner(
            app,
            auto_decompress=False,
            access_log=None,
            shutdown_timeout=2.0,
            keepalive_timeout=cfg.idle_timeout,  # from connect too, so also for slow headers
        )
        await runner.setup()
        self._runner = runner
        host, port = cfg.address
        ssl_ctx = None
        if cfg.tls:
            assert cfg.certfile is not None
            ssl_ctx = server_context(
                certfile=cfg.certfile,
                keyfile=cfg.keyfile,
                client_ca=cfg.client_ca,
                allow_proxy_certs=cfg.allow_proxy_certs,
                require_cert=not self._tokens.enabled,
            )
        await web.TCPSite(runner, host, port, ssl_context=ssl_ctx).start()
        log.info("ingest %s listening on %s:%d%s", cfg.label, host, port, cfg.path)

    # -- one request ------------------------------------------------------------------------------

    async def _counted(self, request: web.Request) -> web.StreamResponse:
        """:meth:`_handle`, with its answer's status passed to ``answered`` (the metrics)."""
        response = await self._handle(request)
        if self._answered is not None:
            with contextlib.suppress(Exception):  # metrics never break an answer
                self._answered(response.status)
        return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        who = self._authenticate(request)
        if isinstance(who, web.Response):
            return who
        # Bodies being read and parsed count against max_inflight_bytes too, so many
        # concurrent uploads cannot hold more than the bound either (this runs on the one
        # event-loop thread: no lock needed).
        cfg = self.config
        gzipped = bool(request.headers.get("Content-Encoding", "").strip())
        reserve = cfg.max_body_bytes if gzipped else request.content_length or cfg.max_body_bytes
        reserve = min(reserve, cfg.max_body_bytes)
        if self._reading and self._reading + reserve > cfg.max_inflight_bytes:
            return _busy(429, "too many bodies being received", cfg.retry_after)
        self._reading += reserve
        try:
            parsed = await self._parse(request, *who)
        finally:
            self._reading -= reserve
        if isinstance(parsed, web.Response):
            return parsed
        if not parsed.records:
            return _json(400, _report(parsed, accepted=0))
        return await self._hand_on(parsed)

    async def _parse(
        self, request: web.Request, identity: str, method: str
    ) -> Parsed | web.Response:
        """The body's records and refused lines (parsed off the event loop), or the error
        answer for the body as a whole."""
        from aiohttp import web

        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        loop = asyncio.get_running_loop()
        limit = self.config.max_records
        try:
            return await loop.run_in_executor(
                None, lambda: parse_body(body, identity=identity, auth=method, max_records=limit)
            )
        except TooMany as exc:
            text = f"{exc.args[0]} records above max_records ({limit}); send smaller batches"
            return _json(413, {"error": text})

    def _authenticate(self, request: web.Request) -> tuple[str, str] | web.Response:
        """``(identity, "x509" | "token")``, or the 401/403 answer."""
        chain = self._peer_chain(request)
        subject = certificate_identity(chain) if chain else None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip() and self._tokens.enabled:
            identity = self._tokens.identity(token.strip())
            if identity is not None:
                return identity, "token"
            return _unauthorized("invalid_token", "the token is not (or no longer) accepted")
        if subject is not None:
            revoked = self._crls.refusal(chain)
            if revoked is not None:
                log.info("ingest: 403 for certificate subject %r: %s", subject, revoked)
                return _json(403, {"error": revoked})
            allowed = self.config.allowed_subjects
            if allowed and subject not in allowed:
                log.info("ingest: 403 for certificate subject %r", subject)
                return _json(403, {"error": f"certificate subject {subject!r} is not allowed"})
            return subject, "x509"
        return _unauthorized("", "send Authorization: Bearer <token> or a client certificate")

    @staticmethod
    def _peer_chain(request: web.Request) -> list[bytes]:
        """The client's verified certificate chain, leaf first ([] without a certificate)."""
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        if ssl_object is None or ssl_object.getpeercert(binary_form=True) is None:
            return []
        return verified_chain(ssl_object)

    async def _body(self, request: web.Request) -> bytes | web.Response:
        """The request body, decompressed, within ``max_body_bytes`` — or the 413/415/400."""
        from aiohttp import web

        limit = self.config.max_body_bytes
        too_large = _json(413, {"error": f"body above max_body_bytes ({limit})"})
        if (request.content_length or 0) > limit:
            return too_large
        try:
            raw = await asyncio.wait_for(request.read(), self.config.body_timeout)
        except web.HTTPRequestEntityTooLarge:
            return too_large
        except asyncio.TimeoutError:
            # A stalled or half-open upload: without this it would hold its reservation
            # of max_inflight_bytes (and its connection) until TCP gives up, hours later.
            log.info("ingest: 408, body not received within %.0fs", self.config.body_timeout)
            answer = _json(408, {"error": "request body not received in time"})
            answer.force_close()
            return answer
        return _decoded(raw, request.headers.get("Content-Encoding", ""), limit)

    async def _hand_on(self, parsed: Parsed) -> web.Response:
        """Queue the records, wait until the pipeline settled them, answer."""
        cfg = self.config
        size = sum(len(body) for _, body in parsed.records)
        if size > cfg.max_inflight_bytes:
            msg = f"the records of this request exceed max_inflight_bytes ({size} bytes)"
            return _json(413, {"error": f"{msg}; send smaller batches"})
        loop = asyncio.get_running_loop()
        pending = _Request(loop, loop.create_future(), 0)
        if not self._queue.offer(parsed.records, pending):
            return _busy(429, "too many records waiting to be handed on", cfg.retry_after)
        started = time.monotonic()
        try:
            ok = await asyncio.wait_for(pending.future, cfg.timeout)
        except asyncio.TimeoutError:
            self._queue.forget(pending)
            log.warning("ingest: %d records not handed on within %.0fs; answered 503",
                        len(parsed.records), time.monotonic() - started)  # fmt: skip
            return _busy(503, "records not handed on in time; send them again", cfg.retry_after)
        if not ok:
            return _busy(503, "records not handed on; send them again", cfg.retry_after)
        accepted = len(parsed.records)
        if parsed.errors:
            return _json(400, _report(parsed, accepted=accepted))
        return _json(200, {"accepted": accepted})


def _decoded(raw: bytes, encoding: str, limit: int) -> bytes | web.Response:
    """``raw`` decoded per its ``Content-Encoding`` (gzip or none), or the 413/415/400."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "x-gzip"):
        return _json(415, {"error": f"Content-Encoding {encoding!r}: use gzip or none"})
    try:
        return gunzip(raw, limit)
    except TooLarge:
        return _json(413, {"error": f"body decompresses above max_body_bytes ({limit})"})
    except BadEncoding as exc:
        return _json(400, {"error": f"not valid gzip: {exc}"})


def _report(parsed: Parsed, *, accepted: int) -> dict[str, Any]:
    """The 400 answer: ``errors`` lists the first refused lines, ``omitted`` counts the rest
    (absent when every refused line is listed)."""
    report: dict[str, Any] = {"accepted": accepted, "errors": [e.as_json() for e in parsed.errors]}
    if parsed.omitted:
        report["omitted"] = parsed.omitted
    return report


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> web.Response:
    from aiohttp import web

    return web.Response(
        status=status, body=dumps(doc), content_type="application/json", headers=headers
    )


def _busy(status: int, text: str, retry_after: int) -> web.Response:
    return _json(status, {"error": text}, {"Retry-After": str(retry_after)})


def _unauthorized(code: str, text: str) -> web.Response:
    log.info("ingest: 401 (%s)", text)
    challenge = f'Bearer error="{code}"' if code else "Bearer"
    return _json(401, {"error": text}, {"WWW-Authenticate": challenge})
