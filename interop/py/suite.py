"""The interop suite for the official Python client (python-socketio 5.x,
the threaded socketio.Client): the same cases as interop/js/suite.mjs,
reported by name.

  RELAY_URLS=http://127.0.0.1:3000 RELAY_JWT_SECRET=... RELAY_API_KEY=... \\
    target/interop-venv/bin/python interop/py/suite.py

Settings: see interop/js/lib.mjs. Exit code 0 only when every case passed.
"""

import socket
import sys
import threading

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from harness import (  # noqa: E402 - after the bytecode switch
    active_orders,
    case,
    config,
    eq,
    is_list,
    is_nonempty_str,
    is_positive_int,
    is_recent_ms,
    is_rfc3339,
    is_str,
    is_stream_id,
    now_s,
    outcome,
    publish,
    run,
    shape,
    sign,
    token,
    uid,
    until,
    url,
)

TRANSPORTS = {
    "websocket": ["websocket"],
    "polling": ["polling"],
    "upgrade": None,  # the client's default: polling first, then the upgrade
}


def check_transport(conn, kind):
    """The transport really is `kind` (and an upgrade really happened)."""
    if kind == "upgrade":
        until(conn.upgraded, lambda: f"no upgrade to websocket (transport: {conn.transport})")
    eq(conn.transport, "polling" if kind == "polling" else "websocket", "transport")


def new_order(customer=None, store=None, timer=2, items=None):
    """An order of a new customer at a new store."""
    customer = customer or uid("cust")
    store = store or uid("store")
    order = uid("order")
    created = publish(
        "order.created",
        {
            "order_id": order,
            "customer_id": customer,
            "store_id": store,
            "items": items if items is not None else [{"sku": "dosa", "qty": 1}],
            "accept_timeout_s": timer,
        },
    )
    return order, customer, store, created


def status_shape(order, status, event_id):
    return {
        "event_id": event_id if event_id else is_stream_id,
        "order_id": order,
        "status": status,
        "timestamp": is_rfc3339,
        "seq": is_positive_int,
    }


def status_update(conn, order, status, event_id, what):
    """Receives one order:status_update of `order` with `status`, checked."""
    e = conn.next(
        "order:status_update",
        where=lambda d: isinstance(d, dict) and d.get("order_id") == order and d.get("status") == status,
    )
    shape(e.data, status_shape(order, status, event_id), f"{what} order:status_update")
    return e.data


# ------------------------------------------------------------ connecting


def connect_case(kind, via):
    @case(f"connect.{kind}.{via}")
    def _(ctx):
        customer = uid("cust")
        conn = ctx.connect(url(len(kind)), jwt=token(customer, "customer"), via=via, transports=TRANSPORTS[kind])
        check_transport(conn, kind)
        # Client -> server -> client: an ack.
        ack = conn.request("order:subscribe", {"order_id": uid("order")})
        eq(ack, {"ok": False, "error": "not allowed"}, "order:subscribe ack for someone else's order")
        # Server -> client: an event of the client's own rooms.
        order, *_ = new_order(customer=customer)
        event_id = publish("order.status", {"order_id": order, "status": "preparing"})
        status_update(conn, order, "preparing", event_id, "customer")
        check_transport(conn, kind)


for _kind in TRANSPORTS:
    for _via in ("auth", "query"):
        connect_case(_kind, _via)


@case("connect.auth_wins_over_query")
def _(ctx):
    customer = uid("cust")
    bad = sign({"sub": customer, "role": "customer", "exp": now_s() + 600}, secret="not-the-secret")
    conn = ctx.connect(url(1), jwt=bad, via="query", auth={"token": token(customer, "customer")})
    eq(conn.request("order:subscribe", {"order_id": uid("order")}), {"ok": False, "error": "not allowed"}, "ack")


# ------------------------------------------------------------ refusals

REFUSALS = [
    ("missing_token", "missing token", {"jwt": None}),
    ("missing_token.polling", "missing token", {"jwt": None, "transports": ["polling"]}),
    ("missing_token.query_empty", "missing token", {"jwt": "", "via": "query"}),
    ("invalid_token.signature", "invalid token", {"jwt": sign({"sub": "x", "role": "customer", "exp": now_s() + 600}, secret="not-the-secret")}),
    ("invalid_token.alg_none", "invalid token", {"jwt": sign({"sub": "x", "role": "customer", "exp": now_s() + 600}, alg="none")}),
    ("invalid_token.malformed", "invalid token", {"jwt": "not-a-jwt", "transports": ["polling"]}),
    ("token_expired", "token expired", {"jwt": sign({"sub": "x", "role": "customer", "exp": now_s() - 120})}),
    ("token_expired.query_polling", "token expired", {"jwt": sign({"sub": "x", "role": "customer", "exp": now_s() - 120}), "via": "query", "transports": ["polling"]}),
    ("role_not_allowed", "role not allowed", {"jwt": sign({"sub": "x", "role": "superuser", "exp": now_s() + 600})}),
    ("invalid_claims.no_sub", "invalid claims", {"jwt": sign({"role": "customer", "exp": now_s() + 600})}),
    ("invalid_claims.no_exp", "invalid claims", {"jwt": sign({"sub": "x", "role": "customer"})}),
    ("invalid_claims.merchant_without_store_ids", "invalid claims", {"jwt": sign({"sub": "x", "role": "merchant", "exp": now_s() + 600}), "via": "query"}),
]


def refusal_case(name, message, options):
    @case(f"connect_error.{name}")
    def _(ctx):
        got = ctx.refused(url(len(name)), **{"transports": ["websocket"], **options})
        eq(got, message, "connect_error message")


for _name, _message, _options in REFUSALS:
    refusal_case(_name, _message, _options)


@case("connect_error.too_many_connections")
def _(ctx):
    jwt = token(uid("cust"), "customer")
    held = [ctx.connect(config.limited_url, jwt=jwt, transports=["websocket"]) for _ in range(config.limited_max)]
    eq(ctx.refused(config.limited_url, jwt=jwt, transports=["websocket"]), "too many connections", "connect_error message")
    eq(
        ctx.refused(config.limited_url, jwt=jwt, transports=["polling"], via="query"),
        "too many connections",
        "connect_error message over polling",
    )
    # A freed place can be taken again.
    held[0].close()

    def admitted():
        conn = ctx.open(config.limited_url, jwt=jwt, transports=["websocket"])
        try:
            conn.connect(wait_timeout=3)
            return True
        except Exception:  # noqa: BLE001
            conn.close()
            errors = [e.get("message") if isinstance(e, dict) else e for e in conn.connect_errors]
            if errors != ["too many connections"]:
                raise
            return False

    until(admitted, lambda: "a connection was still refused after one of the user's sockets closed")


# ------------------------------------------------------------ server events


@case("events.merchant_new_order.accept")
def _(ctx):
    store = uid("store")
    merchant = ctx.connect(url(0), jwt=token(uid("merch"), "merchant", store_ids=[store]), transports=["websocket"])
    items = [{"sku": "masala-dosa", "qty": 2, "notes": "extra chutney"}, {"sku": "filter-coffee", "qty": 1}]
    order, _customer, _store, created = new_order(store=store, timer=30, items=items)
    e = merchant.next("merchant:new_order")
    shape(e.data, {"event_id": created, "order_id": order, "store_id": store, "timer": 30}, "merchant:new_order")
    eq(e.data["items"], items, "merchant:new_order items")
    assert e.wants_ack, "merchant:new_order came without an ack request"
    e.ack({"accepted": True})
    o = outcome(created, f"merchant_{store}")
    shape(
        o,
        {
            "event": "merchant:new_order",
            "order_id": order,
            "outcome": "acked",
            "latency_ms": lambda v: isinstance(v, int) and v >= 0,
            "node": is_str,
        },
        "outcome",
    )
    eq(o.get("response"), {"accepted": True}, "outcome response")


@case("events.merchant_new_order.reject_over_polling")
def _(ctx):
    store = uid("store")
    merchant = ctx.connect(url(1), jwt=token(uid("merch"), "merchant", store_ids=[store]), transports=["polling"])
    order, _customer, _store, created = new_order(store=store, timer=30)
    e = merchant.next("merchant:new_order")
    shape(e.data, {"event_id": created, "order_id": order, "items": is_list, "timer": 30}, "merchant:new_order")
    e.ack({"accepted": False, "reason": "kitchen closed"})
    o = outcome(created, f"merchant_{store}")
    eq(o.get("outcome"), "acked", "outcome")
    eq(o.get("response"), {"accepted": False, "reason": "kitchen closed"}, "outcome response")


@case("events.order_status_update.each_room_once")
def _(ctx):
    store = uid("store")
    driver_id = uid("driver")
    order, customer, _store, _created = new_order(store=store)
    cust = ctx.connect(url(0), jwt=token(customer, "customer"))  # joins order_{id} at connect
    merch = ctx.connect(url(1), jwt=token(uid("merch"), "merchant", store_ids=[store]), transports=["polling"])
    driver = ctx.connect(url(2), jwt=token(driver_id, "driver"), via="query", transports=["websocket"])
    publish("order.assigned", {"order_id": order, "driver_id": driver_id})
    ts = "2026-11-26T16:40:46.811Z"
    event_id = publish("order.status", {"order_id": order, "status": "preparing", "timestamp": ts})
    members = [("customer", cust), ("merchant", merch), ("driver", driver)]
    got = []
    for who, conn in members:
        data = status_update(conn, order, "preparing", event_id, who)
        eq(data["timestamp"], ts, f"{who} timestamp (as the backend sent it)")
        got.append(data)
    eq(got[1], got[0], "merchant's payload vs customer's")
    eq(got[2], got[0], "driver's payload vs customer's")
    for who, conn in members:
        try:
            conn.none("order:status_update", ms=150, where=lambda d: d.get("event_id") == event_id)
        except AssertionError as e:
            raise AssertionError(f"{who} got the update twice: {e}") from None
    # seq counts the order's status updates; a terminal status ends the order.
    id2 = publish("order.status", {"order_id": order, "status": "delivered"})
    last = status_update(cust, order, "delivered", id2, "customer")
    eq(last["seq"], got[0]["seq"] + 1, "seq of the next update")


@case("events.merchant_new_order.offered_on_connect")
def _(ctx):
    # Offers are durable: a merchant that was offline when the order came
    # gets it when it connects, while the timer runs.
    store = uid("store")
    order, customer, _store, created = new_order(store=store, timer=30)
    jwt = token(customer, "customer")
    until(
        lambda: any(o.get("order_id") == order for o in (active_orders(jwt).json or {}).get("orders", [])),
        lambda: f"GET /orders/active never showed {order}",
    )
    merchant = ctx.connect(url(2), jwt=token(uid("merch"), "merchant", store_ids=[store]))
    e = merchant.next("merchant:new_order")
    shape(e.data, {"event_id": created, "order_id": order, "store_id": store, "timer": 30}, "merchant:new_order")
    e.ack({"accepted": True})
    eq(outcome(created, f"merchant_{store}").get("outcome"), "acked", "outcome")


@case("events.order_status_update.in_order")
def _(ctx):
    store = uid("store")
    order, customer, _store, _created = new_order(store=store)
    cust = ctx.connect(url(0), jwt=token(customer, "customer"))
    merch = ctx.connect(url(1), jwt=token(uid("merch"), "merchant", store_ids=[store]), transports=["polling"])
    statuses = [f"step-{i}" for i in range(1, 11)]
    ids = [publish("order.status", {"order_id": order, "status": status}) for status in statuses]
    for who, conn in (("customer", cust), ("merchant", merch)):
        got = [
            conn.next("order:status_update", where=lambda d: isinstance(d, dict) and d.get("order_id") == order).data
            for _ in statuses
        ]
        eq([d["event_id"] for d in got], ids, f"{who}: event ids in append order")
        eq([d["status"] for d in got], statuses, f"{who}: statuses in append order")
        for prev, d in zip(got, got[1:]):
            eq(d["seq"], prev["seq"] + 1, f"{who}: seq after {prev['seq']}")


@case("events.delivery_new_request.accept")
def _(ctx):
    driver_id = uid("driver")
    driver = ctx.connect(url(2), jwt=token(driver_id, "driver"))
    order = uid("order")
    pickup = {"lat": 12.9716, "lng": 77.5946, "address": "MG Road"}
    drop = {"lat": 12.9352, "lng": 77.6245}
    event_id = publish(
        "delivery.request",
        {"order_id": order, "driver_id": driver_id, "pickup": pickup, "drop": drop, "fare": 50, "timer_s": 20},
    )
    e = driver.next("delivery:new_request")
    shape(e.data, {"event_id": event_id, "order_id": order, "fare": 50, "timer": 20}, "delivery:new_request")
    eq(e.data["pickup"], pickup, "pickup")
    eq(e.data["drop"], drop, "drop")
    assert e.wants_ack, "delivery:new_request came without an ack request"
    e.ack({"accepted": True})
    o = outcome(event_id, f"driver_{driver_id}")
    shape(o, {"event": "delivery:new_request", "order_id": order, "outcome": "acked"}, "outcome")
    eq(o.get("response"), {"accepted": True}, "outcome response")


@case("events.admin_alert")
def _(ctx):
    admin = ctx.connect(url(1), jwt=token(uid("admin"), "admin"), via="query", transports=["polling"])
    message = f"interop {uid('alert')}"
    event_id = publish("admin.alert", {"level": "warning", "message": message, "region": "blr", "count": 3})
    e = admin.next("admin:alert", where=lambda d: isinstance(d, dict) and d.get("message") == message)
    shape(e.data, {"event_id": event_id, "level": "warning", "message": message, "region": "blr", "count": 3}, "admin:alert")


# ------------------------------------------------------------ locations


def assigned_order(ctx, driver_transports=("websocket",)):
    """A customer's order assigned to a driver, both connected (on different nodes)."""
    driver_id = uid("driver")
    order, customer, store, _created = new_order()
    cust = ctx.connect(url(0), jwt=token(customer, "customer"), transports=["websocket"])
    driver = ctx.connect(url(1), jwt=token(driver_id, "driver"), transports=list(driver_transports))
    publish("order.assigned", {"order_id": order, "driver_id": driver_id})
    # Events of one order are handled in order: once the driver has this
    # update (through driver_{id}), it is in order_{id} too.
    event_id = publish("order.status", {"order_id": order, "status": "picked_up"})
    status_update(driver, order, "picked_up", event_id, "driver")
    status_update(cust, order, "picked_up", event_id, "customer")
    return order, customer, driver_id, cust, driver, store


LOCATION = {"lat": 12.9716, "lng": 77.5946, "heading": 90, "speed": 40}


@case("location.update_with_ack")
def _(ctx):
    order, _customer, _driver_id, cust, driver, _store = assigned_order(ctx)
    eq(driver.request("driver:location_update", LOCATION), {"ok": True}, "ack")
    e = cust.next("order:driver_location")
    shape(
        e.data,
        {"order_id": order, "lat": 12.9716, "lng": 77.5946, "heading": 90, "speed": 40, "ts": is_recent_ms},
        "order:driver_location",
    )
    driver.none("order:driver_location", ms=200)


@case("location.update_without_ack")
def _(ctx):
    order, _customer, _driver_id, cust, driver, _store = assigned_order(ctx, driver_transports=["polling"])
    driver.sio.emit("driver:location_update", {"lat": -33.8688, "lng": 151.2093})
    e = cust.next("order:driver_location")
    shape(e.data, {"order_id": order, "lat": -33.8688, "lng": 151.2093, "ts": is_recent_ms}, "order:driver_location")
    assert "heading" not in e.data and "speed" not in e.data, f"no heading/speed were sent: {e.data}"


@case("location.latest_on_connect")
def _(ctx):
    order, customer, _driver_id, _cust, driver, _store = assigned_order(ctx)
    eq(driver.request("driver:location_update", LOCATION), {"ok": True}, "ack")
    # The customer's second device gets the latest location at once.
    again = ctx.connect(url(2), jwt=token(customer, "customer"), transports=["polling"])
    e = again.next("order:driver_location")
    shape(e.data, {"order_id": order, "lat": 12.9716, "lng": 77.5946, "ts": is_recent_ms}, "order:driver_location")


@case("location.invalid_payload_ack")
def _(ctx):
    driver = ctx.connect(url(2), jwt=token(uid("driver"), "driver"))
    for bad in [
        {"lat": 91, "lng": 0},
        {"lat": "12.9", "lng": 77.5},
        {"lat": 12.9},
        {"lat": 1, "lng": 2, "heading": 360},
        {"lat": 1, "lng": 2, "speed": -1},
        "nonsense",
    ]:
        ack = driver.request("driver:location_update", bad)
        shape(ack, {"ok": False, "error": is_nonempty_str}, f"ack for {bad!r}")


@case("location.not_a_driver_ack")
def _(ctx):
    cust = ctx.connect(url(0), jwt=token(uid("cust"), "customer"))
    shape(cust.request("driver:location_update", LOCATION), {"ok": False, "error": is_str}, "ack")


# ------------------------------------------------------------ order rooms on request


@case("subscribe.support_subscribe_and_unsubscribe")
def _(ctx):
    order, customer, _store, _created = new_order()
    cust = ctx.connect(url(0), jwt=token(customer, "customer"))
    support = ctx.connect(url(1), jwt=token(uid("support"), "support"), transports=["polling"])
    eq(support.request("order:subscribe", {"order_id": order}), {"ok": True}, "subscribe ack")
    event_id = publish("order.status", {"order_id": order, "status": "preparing"})
    status_update(support, order, "preparing", event_id, "support")
    eq(support.request("order:unsubscribe", {"order_id": order}), {"ok": True}, "unsubscribe ack")
    id2 = publish("order.status", {"order_id": order, "status": "ready"})
    status_update(cust, order, "ready", id2, "customer")
    support.none("order:status_update", ms=300)


@case("subscribe.refused")
def _(ctx):
    order, *_ = new_order()
    other = ctx.connect(url(2), jwt=token(uid("cust"), "customer"))
    eq(other.request("order:subscribe", {"order_id": order}), {"ok": False, "error": "not allowed"}, "another customer's order")
    ack = other.request("order:subscribe", {"id": order})
    shape(ack, {"ok": False, "error": lambda v: isinstance(v, str) and v.startswith("invalid payload")}, "ack for a payload without order_id")


# ------------------------------------------------------------ recovery


def customer_with_update(ctx, reconnection=False, reconnection_delay=0.2, transports=None):
    """A customer with one order and its first update; the auth is built per connect."""
    order, customer, _store, _created = new_order()
    jwt = token(customer, "customer")
    state = {"last": None}

    def auth():
        # A callable: the official client calls it on every (re)connect.
        return {"token": jwt, "last_event_id": state["last"]} if state["last"] else {"token": jwt}

    conn = ctx.connect(url(1), auth=auth, reconnection=reconnection, reconnection_delay=reconnection_delay, transports=transports)
    first = publish("order.status", {"order_id": order, "status": "preparing"})
    status_update(conn, order, "preparing", first, "customer")
    state["last"] = first
    return order, jwt, conn, first


def wait_status(jwt, order, status):
    def shows():
        orders = (active_orders(jwt).json or {}).get("orders", [])
        return any(o.get("order_id") == order and o.get("status") == status for o in orders)

    until(shows, lambda: f"GET /orders/active never showed {order} as {status}")


@case("recovery.reconnect_with_last_event_id")
def _(ctx):
    order, jwt, conn, _first = customer_with_update(ctx)
    conn.sio.disconnect()
    missed = [publish("order.status", {"order_id": order, "status": s}) for s in ("cooking", "ready")]
    wait_status(jwt, order, "ready")  # handled while the client was away
    before = len(conn.events)
    conn.connect()
    done = conn.next("sync:done")
    eq(done.data, {"recovered": True}, "sync:done")
    replay = conn.events[before:]
    eq(
        [f"{e.name}:{e.data.get('event_id') if e.name != 'sync:done' else e.data}" for e in replay],
        [f"order:status_update:{i}" for i in missed] + ["sync:done:{'recovered': True}"],
        "events after reconnecting",
    )
    shape(replay[0].data, status_shape(order, "cooking", missed[0]), "replayed update")
    # Live again, and GET /orders/active agrees.
    live = publish("order.status", {"order_id": order, "status": "on_the_way"})
    status_update(conn, order, "on_the_way", live, "customer")
    res = active_orders(jwt, base=url(2))
    eq(res.status, 200, "GET /orders/active status")
    mine = next((o for o in res.json["orders"] if o.get("order_id") == order), None)
    shape(
        mine,
        {"order_id": order, "status": "on_the_way", "updated_at": is_rfc3339, "customer_id": is_str, "store_id": is_str},
        "active order",
    )


@case("recovery.automatic_reconnect_after_transport_loss")
def _(ctx):
    order, _jwt, conn, _first = customer_with_update(ctx, reconnection=True, reconnection_delay=1, transports=["websocket"])
    # As a dropped network: the TCP connection dies under the client, which
    # reconnects by itself.
    conn.sio.eio.ws.sock.shutdown(socket.SHUT_RDWR)
    missed = publish("order.status", {"order_id": order, "status": "cooking"})
    until(lambda: conn.reconnects >= 1, lambda: "no reconnect within 8 s", timeout=8)
    done = conn.next("sync:done")
    eq(done.data, {"recovered": True}, "sync:done")
    status_update(conn, order, "cooking", missed, "customer")
    conn.none("order:status_update", ms=300)


@case("recovery.sync_event")
def _(ctx):
    order, _jwt, conn, first = customer_with_update(ctx)
    second = publish("order.status", {"order_id": order, "status": "cooking"})
    status_update(conn, order, "cooking", second, "customer")
    result = {}
    caller = threading.Thread(target=lambda: result.update(ack=conn.request("sync", {"last_event_id": first})))
    caller.start()
    status_update(conn, order, "cooking", second, "customer (replayed)")
    eq(conn.next("sync:done").data, {"recovered": True}, "sync:done")
    caller.join(5)
    eq(result.get("ack"), {"ok": True, "recovered": True}, "sync ack")
    conn.none("order:status_update", ms=200, where=lambda d: d.get("event_id") == first)


@case("recovery.sync_not_recovered")
def _(ctx):
    _order, _jwt, conn, _first = customer_with_update(ctx)
    ack = conn.request("sync", {"last_event_id": "1-0"})
    eq(conn.next("sync:done").data, {"recovered": False}, "sync:done")
    eq(ack, {"ok": True, "recovered": False}, "sync ack")
    conn.none("order:status_update", ms=200)


@case("recovery.sync_invalid_payload")
def _(ctx):
    conn = ctx.connect(url(0), jwt=token(uid("cust"), "customer"))
    ack = conn.request("sync", {"since": "1-0"})
    shape(ack, {"ok": False, "error": lambda v: isinstance(v, str) and v.startswith("invalid payload")}, "sync ack")


# ------------------------------------------------------------ order chat (§7)


def id_ms(event_id):
    """The unix ms of a stream id: a chat message's `ts` is its entry's time."""
    return int(event_id.split("-")[0])


def sent(ack, what):
    """A chat:send ack that accepted the message: its event id and ts, checked."""
    shape(ack, {"ok": True, "event_id": is_stream_id, "ts": is_recent_ms}, f"{what} chat:send ack")
    eq(ack["ts"], id_ms(ack["event_id"]), f"{what}: ts is the time of event_id")
    return ack


def message_shape(order, ack, from_id, from_role, text):
    return {
        "event_id": ack["event_id"],
        "order_id": order,
        "text": text,
        "ts": ack["ts"],
        "from": {"id": from_id, "role": from_role},
    }


def chat_message(conn, order, ack, from_id, from_role, text, what):
    """Receives the chat:message of `ack`'s event id, checked against the ack."""
    e = conn.next("chat:message", where=lambda d: isinstance(d, dict) and d.get("event_id") == ack["event_id"])
    shape(e.data, message_shape(order, ack, from_id, from_role, text), f"{what} chat:message")
    return e.data


def texts(ack, what):
    shape(ack, {"ok": True, "messages": is_list}, f"{what} chat:history ack")
    return [m["text"] for m in ack["messages"]]


@case("chat.send_and_receive")
def _(ctx):
    # The customer and the driver on different nodes.
    order, customer, driver_id, cust, driver, _store = assigned_order(ctx)
    hello = sent(cust.request("chat:send", {"order_id": order, "text": "I'm at the gate", "client_msg_id": "m-1"}), "customer")
    got = chat_message(driver, order, hello, customer, "customer", "I'm at the gate", "driver")
    eq(got.get("client_msg_id"), "m-1", "client_msg_id given back")
    # The sender's own sockets get it too, the same payload.
    eq(chat_message(cust, order, hello, customer, "customer", "I'm at the gate", "customer (own)"), got, "sender's copy")
    reply = sent(driver.request("chat:send", {"order_id": order, "text": "coming down"}), "driver")
    back = chat_message(cust, order, reply, driver_id, "driver", "coming down", "customer")
    assert "client_msg_id" not in back, f"no client_msg_id was sent: {back}"
    chat_message(driver, order, reply, driver_id, "driver", "coming down", "driver (own)")
    # One sequence: the reply comes after the first message, everywhere.
    for who, conn in (("customer", cust), ("driver", driver)):
        ids = [e.data["event_id"] for e in list(conn.events) if e.name == "chat:message"]
        eq(ids, [hello["event_id"], reply["event_id"]], f"{who}: messages in send order")


@case("chat.history_before_and_limit")
def _(ctx):
    order, customer, driver_id, cust, driver, _store = assigned_order(ctx)
    acks = []
    for i in range(5):
        who, conn = ("customer", cust) if i % 2 == 0 else ("driver", driver)
        acks.append(sent(conn.request("chat:send", {"order_id": order, "text": f"m{i}"}), who))
    # Every message delivered before reading (history is written with it).
    last = chat_message(cust, order, acks[4], customer, "customer", "m4", "customer")
    everything = driver.request("chat:history", {"order_id": order})
    eq(texts(everything, "all"), ["m0", "m1", "m2", "m3", "m4"], "history, oldest first")
    eq(everything["messages"][4], last, "a history entry is the chat:message")
    shape(everything["messages"][1], message_shape(order, acks[1], driver_id, "driver", "m1"), "history entry")
    eq(texts(cust.request("chat:history", {"order_id": order, "limit": 2}), "newest"), ["m3", "m4"], "limit 2")
    page = cust.request("chat:history", {"order_id": order, "before": acks[3]["event_id"], "limit": 2})
    eq(texts(page, "page"), ["m1", "m2"], "before m3, limit 2")
    first = driver.request("chat:history", {"order_id": order, "before": acks[1]["event_id"]})
    eq(texts(first, "first page"), ["m0"], "before m1")
    start = driver.request("chat:history", {"order_id": order, "before": acks[0]["event_id"]})
    eq(texts(start, "start"), [], "before the first")


@case("chat.typing_reaches_the_other_only")
def _(ctx):
    order, customer, driver_id, cust, driver, _store = assigned_order(ctx)
    eq(cust.request("chat:typing", {"order_id": order}), {"ok": True}, "chat:typing ack")
    e = driver.next("chat:typing")
    eq(e.data, {"order_id": order, "from": {"id": customer, "role": "customer"}}, "chat:typing")
    # The driver writes after the notice reached it: by the time the customer
    # has that message, a notice to the sender would have come before it.
    reply = sent(driver.request("chat:send", {"order_id": order, "text": "ok"}), "driver")
    chat_message(cust, order, reply, driver_id, "driver", "ok", "customer")
    eq([e.name for e in list(cust.events) if e.name == "chat:typing"], [], "typing notices the sender got")
    # Typing is never recorded: the history holds the message only.
    read = cust.request("chat:history", {"order_id": order})
    eq([m["event_id"] for m in read["messages"]], [reply["event_id"]], "history")


@case("chat.refused")
def _(ctx):
    order, _customer, _driver_id, cust, driver, store = assigned_order(ctx)
    stranger = ctx.connect(url(2), jwt=token(uid("cust"), "customer"))
    merchant = ctx.connect(url(2), jwt=token(uid("merch"), "merchant", store_ids=[store]), transports=["polling"])
    not_allowed = {"ok": False, "error": "not allowed"}
    eq(stranger.request("chat:send", {"order_id": order, "text": "hi"}), not_allowed, "a foreign order's chat:send")
    eq(stranger.request("chat:history", {"order_id": order}), not_allowed, "a foreign order's chat:history")
    eq(merchant.request("chat:send", {"order_id": order, "text": "hi"}), not_allowed, "the store's merchant: chat:send")
    eq(merchant.request("chat:typing", {"order_id": order}), not_allowed, "the store's merchant: chat:typing")
    eq(driver.request("chat:send", {"order_id": uid("order"), "text": "hi"}), not_allowed, "the driver, another order")
    for bad in ({"order_id": order, "text": " \n "}, {"order_id": order}, "hello"):
        eq(cust.request("chat:send", bad), {"ok": False, "error": "invalid message"}, f"chat:send {bad!r}")
    # After the terminal status the chat is read-only.
    ok = sent(cust.request("chat:send", {"order_id": order, "text": "thanks"}), "customer")
    end = publish("order.status", {"order_id": order, "status": "delivered"})
    status_update(driver, order, "delivered", end, "driver")
    eq(driver.request("chat:send", {"order_id": order, "text": "bye"}), {"ok": False, "error": "order not active"}, "chat:send after delivered")
    read = cust.request("chat:history", {"order_id": order})
    eq([m["event_id"] for m in read["messages"]], [ok["event_id"]], "history after delivered")


# ------------------------------------------------------------ token refresh (§7)


@case("auth.refresh")
def _(ctx):
    merch, kept, added = uid("merch"), uid("store"), uid("store")
    # A token inside the notice period (60 s): auth:expiring comes at once.
    short_exp = now_s() + 30
    conn = ctx.connect(url(1), jwt=sign({"sub": merch, "role": "merchant", "store_ids": [kept], "exp": short_exp}))
    eq(conn.next("auth:expiring").data, {"exp": short_exp}, "auth:expiring")
    exp = now_s() + 900
    ack = conn.request("auth:refresh", {"token": sign({"sub": merch, "role": "merchant", "store_ids": [kept, added], "exp": exp})})
    eq(ack, {"ok": True, "exp": exp}, "auth:refresh ack")
    # The added store's orders now reach the connection.
    order, _customer, _store, _created = new_order(store=added, timer=30)
    e = conn.next("merchant:new_order")
    eq(e.data["order_id"], order, "order of the added store")
    e.ack({"accepted": True})


@case("auth.refresh_refused")
def _(ctx):
    customer = uid("cust")
    conn = ctx.connect(url(2), jwt=token(customer, "customer"))
    refusals = [
        ("bad signature", {"token": sign({"sub": customer, "role": "customer", "exp": now_s() + 600}, secret="not-the-secret")}, "invalid token"),
        ("expired", {"token": sign({"sub": customer, "role": "customer", "exp": now_s() - 120})}, "token expired"),
        ("another user", {"token": token(uid("cust"), "customer")}, "invalid claims"),
        ("another role", {"token": token(customer, "driver")}, "role not allowed"),
        ("no token", {}, "missing token"),
    ]
    for what, payload, error in refusals:
        eq(conn.request("auth:refresh", payload), {"ok": False, "error": error}, f"auth:refresh, {what}")
    assert conn.sio.connected, "disconnected by a refused refresh"
    eq(conn.request("sync", {"last_event_id": "0-0"}).get("ok"), True, "sync after the refusals")


# ------------------------------------------------------------ HTTP for clients


@case("http.orders_active")
def _(ctx):
    order, customer, driver_id, _cust, driver, _store = assigned_order(ctx)
    eq(driver.request("driver:location_update", LOCATION), {"ok": True}, "location ack")
    want = {
        "order_id": order,
        "status": "picked_up",
        "updated_at": is_rfc3339,
        "customer_id": customer,
        "driver_id": driver_id,
        "store_id": is_str,
    }
    for who, jwt in (("customer", token(customer, "customer")), ("driver", token(driver_id, "driver"))):
        found = {}

        def has_location(jwt=jwt, found=found):
            res = active_orders(jwt)
            mine = next((o for o in (res.json or {}).get("orders", []) if o.get("order_id") == order), None)
            found["order"] = mine
            return res.status == 200 and mine is not None and "driver_location" in mine

        until(has_location, lambda who=who, found=found: f"{who}: no driver_location in GET /orders/active: {found.get('order')}")
        shape(found["order"], want, f"{who}'s active order")
        shape(found["order"]["driver_location"], {"lat": 12.9716, "lng": 77.5946, "ts": is_recent_ms}, "driver_location")
    eq(active_orders(token(uid("admin"), "admin")).json, {"orders": []}, "admin's active orders")
    expired = active_orders(sign({"sub": customer, "role": "customer", "exp": now_s() - 120}))
    eq(expired.status, 401, "status for an expired token")
    eq(expired.json, {"error": "token expired"}, "body for an expired token")
    missing = active_orders(None)
    eq(missing.status, 401, "status without a token")
    eq(missing.json, {"error": "missing token"}, "body without a token")


if __name__ == "__main__":
    run("python")
