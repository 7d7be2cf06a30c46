"""The Python interop suite's harness: settings from the environment, HS256
tokens, the relay's HTTP API, official-client connections that record every
event, and a runner that reports each case by name.

Environment (the JavaScript suite reads the same; see interop/js/lib.mjs):
  RELAY_URLS, RELAY_API_URL, RELAY_JWT_SECRET, RELAY_API_KEY,
  RELAY_LIMITED_URL, RELAY_LIMITED_MAX, RELAY_INTEROP_ONLY,
  RELAY_INTEROP_CASE_TIMEOUT_MS
"""

import base64
import hashlib
import hmac
import itertools
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
import traceback
from urllib.parse import quote

import requests
import socketio


def _required(name):
    value = os.environ.get(name)
    if not value:
        print(f"interop: set {name} (see interop/py/harness.py)", file=sys.stderr)
        sys.exit(2)
    return value


class Config:
    def __init__(self):
        self.urls = [u.strip().rstrip("/") for u in _required("RELAY_URLS").split(",") if u.strip()]
        self.api_url = (os.environ.get("RELAY_API_URL") or self.urls[0]).rstrip("/")
        self.secret = _required("RELAY_JWT_SECRET")
        self.api_key = _required("RELAY_API_KEY")
        self.limited_url = (os.environ.get("RELAY_LIMITED_URL") or self.urls[0]).rstrip("/")
        self.limited_max = int(os.environ.get("RELAY_LIMITED_MAX") or 20)
        only = os.environ.get("RELAY_INTEROP_ONLY")
        self.only = re.compile(only) if only else None
        self.case_timeout_s = int(os.environ.get("RELAY_INTEROP_CASE_TIMEOUT_MS") or 15000) / 1000


config = Config()


def url(i=0):
    """The client URL number `i` (clients of one case on different nodes)."""
    return config.urls[i % len(config.urls)]


# Ids of this run: every order, user and store is new, so runs never meet.
RUN = f"py{int(time.time() * 1000):x}{secrets.token_hex(3)}"
_counter = itertools.count(1)


def uid(kind):
    return f"{kind}-{RUN}-{next(_counter)}"


# ------------------------------------------------------------------ tokens


def _b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign(claims, secret=None, alg="HS256"):
    """Signs `claims` (HS256 with the nodes' secret unless `secret` is given)."""
    header = _b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = _b64url(json.dumps(claims).encode())
    if alg == "none":
        return f"{header}.{body}."
    key = (secret or config.secret).encode()
    sig = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64url(sig)}"


def now_s():
    return int(time.time())


def token(sub, role, **extra):
    """A valid token for `sub` with `role`, for ten minutes; `extra` claims on top."""
    return sign({"sub": sub, "role": role, "exp": now_s() + 600, **extra})


# ------------------------------------------------------------------ HTTP


class Response:
    def __init__(self, status, text):
        self.status = status
        self.text = text
        try:
            self.json = json.loads(text)
        except ValueError:
            self.json = None


def http(method, path, bearer=None, body=None, base=None):
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
    res = requests.request(method, f"{base or config.api_url}{path}", headers=headers, json=body, timeout=5)
    return Response(res.status_code, res.text)


def publish(kind, data):
    """POST /api/events: the backend's way in. Returns the event id."""
    res = http("POST", "/api/events", bearer=config.api_key, body={"type": kind, "data": data})
    if res.status != 202 or not isinstance((res.json or {}).get("event_id"), str):
        raise AssertionError(f"POST /api/events {kind}: {res.status} {res.text}")
    return res.json["event_id"]


def outcome(event_id, target, timeout=10.0):
    """Waits for the outcome of the offer `event_id` to `target` (GET /api/outcomes)."""
    deadline = time.monotonic() + timeout
    while True:
        res = http("GET", "/api/outcomes?limit=1000", bearer=config.api_key)
        if res.status != 200:
            raise AssertionError(f"GET /api/outcomes: {res.status} {res.text}")
        for o in res.json["outcomes"]:
            if o.get("event_id") == event_id and o.get("target") == target:
                return o
        if time.monotonic() > deadline:
            raise AssertionError(f"no outcome for {event_id} to {target} within {timeout} s")
        time.sleep(0.1)


def active_orders(jwt, base=None):
    """GET /orders/active through `base` (a client URL) with a client token."""
    return http("GET", "/orders/active", bearer=jwt, base=base or url(0))


def until(cond, message, timeout=5.0):
    """Waits until `cond()` holds (checking every 20 ms) or fails with `message()`."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(message())
        time.sleep(0.02)


# ------------------------------------------------------------------ clients

# Server events that ask for an ack. python-socketio answers with the
# handler's return value, so their handler waits for the case to decide.
ACKED_EVENTS = ("merchant:new_order", "delivery:new_request")
ACK_WAIT_S = 10.0


class Event:
    def __init__(self, name, args, wants_ack=False):
        self.name = name
        self.args = args
        self.data = args[0] if args else None
        self.wants_ack = wants_ack
        self.taken = False
        self._reply = None
        self._replied = threading.Event()

    def ack(self, value):
        self._reply = value
        self._replied.set()

    def wait_reply(self):
        self._replied.wait(ACK_WAIT_S)
        return self._reply


class _LogLines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


class _OrderedClient(socketio.Client):
    """socketio.Client that handles events in the order they arrive.

    The threaded client's Engine.IO layer runs every incoming message on a
    thread of its own, so two events the server sent in order can reach the
    handlers swapped (seen: `order:status_update` seq 4 before 3), and the
    suite could not tell a relay ordering bug from the client's scheduling.
    Messages are dispatched on the reading thread instead; only the events
    that wait for the test's ack reply get a thread, so that waiting never
    blocks the reader.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        trigger = self.eio._trigger_event

        def in_order(event, *args, **kwargs):
            if event == "message":
                kwargs["run_async"] = False
            return trigger(event, *args, **kwargs)

        self.eio._trigger_event = in_order

    def _handle_event(self, namespace, id, data):
        if id is not None and data and data[0] in ACKED_EVENTS:
            self.start_background_task(super()._handle_event, namespace, id, data)
        else:
            super()._handle_event(namespace, id, data)


class Conn:
    """One official client (socketio.Client) that records every event.

    via: "auth" (token in the auth payload) or "query" (in the URL);
    transports: ["websocket"], ["polling"] or None (polling, then upgrade);
    auth: extra auth fields, or a callable returning the whole auth.
    """

    def __init__(self, base, jwt=None, via="auth", transports=None, auth=None, reconnection=False, reconnection_delay=0.2):
        self.events = []
        self.cond = threading.Condition()
        self.connect_errors = []
        self.reconnects = 0
        self._connected_once = False
        # The engine's log says whether the WebSocket upgrade happened.
        self.log = _LogLines()
        logger = logging.getLogger(f"engineio.interop.{id(self)}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(self.log)
        self.sio = _OrderedClient(
            reconnection=reconnection,
            reconnection_delay=reconnection_delay,
            reconnection_delay_max=reconnection_delay,
            randomization_factor=0,
            engineio_logger=logger,
        )
        self.sio.on("*", self._record)
        for name in ACKED_EVENTS:
            self.sio.on(name, self._acked_handler(name))
        self.sio.on("connect", self._on_connect)
        self.sio.on("connect_error", self._on_connect_error)
        self.base = base
        self.jwt = jwt
        self.via = via
        self.transports = transports
        self.auth = auth

    def _push(self, event):
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def _record(self, name, *args):
        self._push(Event(name, list(args)))

    def _acked_handler(self, name):
        def handler(*args):
            event = Event(name, list(args), wants_ack=True)
            self._push(event)
            return event.wait_reply()

        return handler

    def _on_connect(self):
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True

    def _on_connect_error(self, data=None):
        self.connect_errors.append(data)

    def connect(self, wait_timeout=8):
        target = self.base
        if self.via == "query" and self.jwt is not None:
            target = f"{self.base}/?token={quote(self.jwt, safe='')}"
        if callable(self.auth):
            auth = self.auth
        elif self.via == "auth" and self.jwt is not None:
            auth = {"token": self.jwt, **(self.auth or {})}
        else:
            auth = self.auth
        self.sio.connect(target, auth=auth, transports=self.transports, wait_timeout=wait_timeout)

    @property
    def transport(self):
        return self.sio.transport()

    def upgraded(self):
        return any("WebSocket upgrade was successful" in line for line in self.log.lines)

    def request(self, event, data, timeout=5):
        """Emits with an ack and returns the ack's first argument."""
        return self.sio.call(event, data, timeout=timeout)

    def next(self, name, timeout=8.0, where=None):
        """The first event `name` (matching `where`) not taken yet, waiting for it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events:
                    if not e.taken and e.name == name and (where is None or where(e.data)):
                        e.taken = True
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    got = "; ".join(f"{e.name} {json.dumps(e.data)}" for e in self.events) or "nothing"
                    raise AssertionError(f"no {name} within {timeout} s (received: {got})")
                self.cond.wait(left)

    def none(self, name, ms=400, where=None):
        """Fails if an event `name` (not taken yet, matching `where`) arrives within `ms`."""
        time.sleep(ms / 1000)
        with self.cond:
            for e in self.events:
                if not e.taken and e.name == name and (where is None or where(e.data)):
                    raise AssertionError(f"unexpected {name} {json.dumps(e.data)}")

    def close(self):
        try:
            self.sio.disconnect()
        except Exception:  # noqa: BLE001 - closing what may be half open
            pass


# ------------------------------------------------------------------ checks


def eq(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: expected {json.dumps(expected)}, got {json.dumps(actual)}")


STREAM_ID = re.compile(r"^\d+-\d+$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def is_stream_id(v):
    return isinstance(v, str) and bool(STREAM_ID.match(v))


def is_rfc3339(v):
    return isinstance(v, str) and bool(RFC3339.match(v))


def is_recent_ms(v):
    return isinstance(v, int) and not isinstance(v, bool) and abs(v - time.time() * 1000) < 60000


def is_positive_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def is_str(v):
    return isinstance(v, str)


def is_nonempty_str(v):
    return isinstance(v, str) and len(v) > 0


def is_list(v):
    return isinstance(v, list)


def shape(payload, spec, what):
    """`payload` has every key of `spec`, with that value or passing that check."""
    if not isinstance(payload, dict):
        raise AssertionError(f"{what}: not an object: {json.dumps(payload)}")
    for key, want in spec.items():
        v = payload.get(key)
        ok = want(v) if callable(want) else (key in payload and v == want)
        if not ok:
            name = getattr(want, "__name__", "a valid value") if callable(want) else json.dumps(want)
            raise AssertionError(f"{what}: field {key} is {json.dumps(v)}, want {name} (payload {json.dumps(payload)})")


# ------------------------------------------------------------------ runner

_cases = []


def case(name):
    """Registers a case `fn(ctx)`; it raises to fail."""

    def register(fn):
        _cases.append((name, fn))
        return fn

    return register


class Refused(Exception):
    pass


class Context:
    def __init__(self):
        self.conns = []

    def open(self, base, **options):
        conn = Conn(base, **options)
        self.conns.append(conn)
        return conn

    def connect(self, base, **options):
        conn = self.open(base, **options)
        try:
            conn.connect()
        except socketio.exceptions.ConnectionError as e:
            raise AssertionError(f"connect failed: {e} (connect_error: {conn.connect_errors})") from None
        return conn

    def refused(self, base, **options):
        """The connect_error message the server refuses this connection with."""
        conn = self.open(base, **options)
        outcome = {}

        def attempt():
            try:
                conn.connect()
                outcome["connected"] = True
            except socketio.exceptions.ConnectionError:
                pass

        # The connect_error event decides. Over polling, python-engineio's
        # connect() may return only when the server ends the pending long-poll
        # (its CLOSE packet can be lost when it disconnects while a POST is in
        # flight), so the call is not waited for.
        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        until(
            lambda: conn.connect_errors or not worker.is_alive(),
            lambda: "neither connected nor refused within 10 s",
            timeout=10,
        )
        if outcome.get("connected"):
            raise AssertionError("connected, but a connect_error was expected")
        if not conn.connect_errors:
            raise AssertionError("refused without a connect_error")
        data = conn.connect_errors[-1]
        return data.get("message") if isinstance(data, dict) else data

    def close_all(self):
        for c in self.conns:
            c.close()


def _where(exc):
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith("suite.py"):
            return f" [suite.py:{frame.lineno}]"
    return ""


def run(suite_name):
    chosen = [(n, f) for n, f in _cases if not config.only or config.only.search(n)]
    passed, failed = 0, []
    started = time.monotonic()
    print(f"{suite_name}: {len(chosen)} cases against {', '.join(config.urls)} (run {RUN})", flush=True)
    for name, fn in chosen:
        ctx = Context()
        result = {}

        def body(fn=fn, ctx=ctx, result=result):
            try:
                fn(ctx)
                result["ok"] = True
            except BaseException as e:  # noqa: BLE001 - every failure is reported
                result["error"] = f"{type(e).__name__}: {e}{_where(e)}"

        t0 = time.monotonic()
        worker = threading.Thread(target=body, daemon=True)
        worker.start()
        worker.join(config.case_timeout_s)
        ms = int((time.monotonic() - t0) * 1000)
        if result.get("ok"):
            passed += 1
            print(f"ok   {name} ({ms} ms)", flush=True)
        else:
            failed.append(name)
            reason = result.get("error") or f"case timed out after {config.case_timeout_s:.0f} s"
            print(f"FAIL {name} ({ms} ms): {reason}", flush=True)
        ctx.close_all()
    print(f"{suite_name}: {passed} passed, {len(failed)} failed in {time.monotonic() - started:.1f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", flush=True)
    # The clients' background threads must not keep the process alive.
    os._exit(1 if failed or not chosen else 0)
