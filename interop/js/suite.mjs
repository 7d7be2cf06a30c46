// The interop suite for the official JavaScript client (socket.io-client 4.x
// in Node.js): every case of CONTRACT §2, §5 and §7 a client can see, reported by
// name. interop/py/suite.py runs the same cases with python-socketio.
//
//   RELAY_URLS=http://127.0.0.1:3000 RELAY_JWT_SECRET=... RELAY_API_KEY=... \
//     node interop/js/suite.mjs
//
// Settings: see interop/js/lib.mjs. Exit code 0 only when every case passed.

import {
  activeOrders,
  assert,
  config,
  eq,
  isPositiveInt,
  isRecentMs,
  isRfc3339,
  isStreamId,
  outcome,
  publish,
  run,
  same,
  shape,
  sign,
  sleep,
  test,
  token,
  uid,
  url,
  waitConnected,
} from "./lib.mjs";

const TRANSPORTS = {
  websocket: ["websocket"],
  polling: ["polling"],
  upgrade: undefined, // the client's default: polling first, then the upgrade
};

/** Waits until `cond()` holds (polling every 20 ms) or throws `message`. */
async function until(cond, message, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(message());
    await sleep(20);
  }
}

/** The transport really is `kind` (and an upgrade really happened). */
async function checkTransport(conn, kind) {
  if (kind === "upgrade") {
    await until(
      () => conn.upgradedTo === "websocket",
      () => `no upgrade to websocket (transport: ${conn.transport})`,
    );
    eq(conn.openedWith, "polling", "transport before the upgrade");
  }
  eq(conn.transport, kind === "polling" ? "polling" : "websocket", "transport");
}

/** An order of a new customer at a new store: returns their ids. */
async function newOrder({ customer = uid("cust"), store = uid("store"), timer = 2, items } = {}) {
  const order = uid("order");
  const eventId = await publish("order.created", {
    order_id: order,
    customer_id: customer,
    store_id: store,
    items: items ?? [{ sku: "dosa", qty: 1 }],
    accept_timeout_s: timer,
  });
  return { order, customer, store, createdId: eventId };
}

const STATUS_SHAPE = (order, status, eventId) => ({
  event_id: eventId,
  order_id: order,
  status,
  timestamp: isRfc3339,
  seq: isPositiveInt,
});

/** Receives one order:status_update of `order` with `status`, checked. */
async function statusUpdate(conn, order, status, eventId, what) {
  const e = await conn.rec.next("order:status_update", { where: (d) => d?.order_id === order && d?.status === status });
  shape(e.data, STATUS_SHAPE(order, status, eventId ?? isStreamId), `${what} order:status_update`);
  return e.data;
}

// ------------------------------------------------------------ connecting

for (const [kind, transports] of Object.entries(TRANSPORTS)) {
  for (const via of ["auth", "query"]) {
    test(`connect.${kind}.${via}`, async (ctx) => {
      const customer = uid("cust");
      const jwt = token(customer, "customer");
      const conn = await ctx.connect(url(kind.length), { jwt, via, transports });
      await checkTransport(conn, kind);
      // Client -> server -> client: an ack.
      const ack = await conn.request("order:subscribe", { order_id: uid("order") });
      same(ack, { ok: false, error: "not allowed" }, "order:subscribe ack for someone else's order");
      // Server -> client: an event of the client's own rooms.
      const { order } = await newOrder({ customer });
      const id = await publish("order.status", { order_id: order, status: "preparing" });
      await statusUpdate(conn, order, "preparing", id, "customer");
      await checkTransport(conn, kind);
    });
  }
}

test("connect.auth_wins_over_query", async (ctx) => {
  const customer = uid("cust");
  const bad = sign({ sub: customer, role: "customer", exp: now() + 600 }, { secret: "not-the-secret" });
  const conn = await ctx.connect(url(1), { jwt: bad, via: "query", auth: { token: token(customer, "customer") } });
  same(await conn.request("order:subscribe", { order_id: uid("order") }), { ok: false, error: "not allowed" }, "ack");
});

// ------------------------------------------------------------ refusals

const now = () => Math.floor(Date.now() / 1000);
const refusals = [
  ["missing_token", "missing token", { jwt: undefined }],
  ["missing_token.polling", "missing token", { jwt: undefined, transports: ["polling"] }],
  ["missing_token.query_empty", "missing token", { jwt: "", via: "query" }],
  ["invalid_token.signature", "invalid token", { jwt: sign({ sub: "x", role: "customer", exp: now() + 600 }, { secret: "not-the-secret" }) }],
  ["invalid_token.alg_none", "invalid token", { jwt: sign({ sub: "x", role: "customer", exp: now() + 600 }, { alg: "none" }) }],
  ["invalid_token.malformed", "invalid token", { jwt: "not-a-jwt", transports: ["polling"] }],
  ["token_expired", "token expired", { jwt: sign({ sub: "x", role: "customer", exp: now() - 120 }) }],
  ["token_expired.query_polling", "token expired", { jwt: sign({ sub: "x", role: "customer", exp: now() - 120 }), via: "query", transports: ["polling"] }],
  ["role_not_allowed", "role not allowed", { jwt: sign({ sub: "x", role: "superuser", exp: now() + 600 }) }],
  ["invalid_claims.no_sub", "invalid claims", { jwt: sign({ role: "customer", exp: now() + 600 }) }],
  ["invalid_claims.no_exp", "invalid claims", { jwt: sign({ sub: "x", role: "customer" }) }],
  ["invalid_claims.merchant_without_store_ids", "invalid claims", { jwt: sign({ sub: "x", role: "merchant", exp: now() + 600 }), via: "query" }],
];
for (const [name, message, options] of refusals) {
  test(`connect_error.${name}`, async (ctx) => {
    const got = await ctx.refused(url(name.length), { transports: ["websocket"], ...options });
    eq(got, message, "connect_error message");
  });
}

test("connect_error.too_many_connections", async (ctx) => {
  const user = uid("cust");
  const jwt = token(user, "customer");
  const held = [];
  for (let i = 0; i < config.limitedMax; i += 1) {
    held.push(await ctx.connect(config.limitedUrl, { jwt, transports: ["websocket"] }));
  }
  eq(await ctx.refused(config.limitedUrl, { jwt, transports: ["websocket"] }), "too many connections", "connect_error message");
  eq(await ctx.refused(config.limitedUrl, { jwt, transports: ["polling"], via: "query" }), "too many connections", "connect_error message over polling");
  // A freed place can be taken again.
  held[0].close();
  await until(
    async () => {
      const conn = ctx.open(config.limitedUrl, { jwt, transports: ["websocket"] });
      try {
        await waitConnected(conn.socket, 3000);
        return true;
      } catch (err) {
        conn.close();
        if (err.message !== "too many connections") throw err;
        return false;
      }
    },
    () => "a connection was still refused after one of the user's sockets closed",
  );
});

// ------------------------------------------------------------ server events

test("events.merchant_new_order.accept", async (ctx) => {
  const store = uid("store");
  const merchant = await ctx.connect(url(0), { jwt: token(uid("merch"), "merchant", { store_ids: [store] }), transports: ["websocket"] });
  const items = [{ sku: "masala-dosa", qty: 2, notes: "extra chutney" }, { sku: "filter-coffee", qty: 1 }];
  const { order, createdId } = await newOrder({ store, timer: 30, items });
  const e = await merchant.rec.next("merchant:new_order");
  shape(e.data, { event_id: createdId, order_id: order, store_id: store, timer: 30 }, "merchant:new_order");
  same(e.data.items, items, "merchant:new_order items");
  assert(e.ack, "merchant:new_order came without an ack request");
  e.ack({ accepted: true });
  const o = await outcome(createdId, `merchant_${store}`);
  shape(o, { event: "merchant:new_order", order_id: order, outcome: "acked", latency_ms: (v) => Number.isInteger(v) && v >= 0, node: ":string" }, "outcome");
  same(o.response, { accepted: true }, "outcome response");
});

test("events.merchant_new_order.reject_over_polling", async (ctx) => {
  const store = uid("store");
  const merchant = await ctx.connect(url(1), { jwt: token(uid("merch"), "merchant", { store_ids: [store] }), transports: ["polling"] });
  const { order, createdId } = await newOrder({ store, timer: 30 });
  const e = await merchant.rec.next("merchant:new_order");
  shape(e.data, { event_id: createdId, order_id: order, items: ":array", timer: 30 }, "merchant:new_order");
  e.ack({ accepted: false, reason: "kitchen closed" });
  const o = await outcome(createdId, `merchant_${store}`);
  eq(o.outcome, "acked", "outcome");
  same(o.response, { accepted: false, reason: "kitchen closed" }, "outcome response");
});

test("events.order_status_update.each_room_once", async (ctx) => {
  const store = uid("store");
  const driverId = uid("driver");
  const { order, customer } = await newOrder({ store });
  const cust = await ctx.connect(url(0), { jwt: token(customer, "customer") }); // joins order_{id} at connect
  const merch = await ctx.connect(url(1), { jwt: token(uid("merch"), "merchant", { store_ids: [store] }), transports: ["polling"] });
  const driver = await ctx.connect(url(2), { jwt: token(driverId, "driver"), via: "query", transports: ["websocket"] });
  await publish("order.assigned", { order_id: order, driver_id: driverId });
  const id = await publish("order.status", { order_id: order, status: "preparing", timestamp: "2026-11-26T16:40:46.811Z" });
  const got = [];
  for (const [who, conn] of [["customer", cust], ["merchant", merch], ["driver", driver]]) {
    const data = await statusUpdate(conn, order, "preparing", id, who);
    eq(data.timestamp, "2026-11-26T16:40:46.811Z", `${who} timestamp (as the backend sent it)`);
    got.push(data);
  }
  same(got[1], got[0], "merchant's payload vs customer's");
  same(got[2], got[0], "driver's payload vs customer's");
  for (const [who, conn] of [["customer", cust], ["merchant", merch], ["driver", driver]]) {
    await conn.rec.none("order:status_update", { ms: 150, where: (d) => d?.event_id === id }).catch((err) => {
      throw new Error(`${who} got the update twice: ${err.message}`);
    });
  }
  // seq counts the order's status updates; a terminal status ends the order.
  const id2 = await publish("order.status", { order_id: order, status: "delivered" });
  const last = await statusUpdate(cust, order, "delivered", id2, "customer");
  eq(last.seq, got[0].seq + 1, "seq of the next update");
});

test("events.merchant_new_order.offered_on_connect", async (ctx) => {
  // Offers are durable: a merchant that was offline when the order came
  // gets it when it connects, while the timer runs.
  const store = uid("store");
  const { order, customer, createdId } = await newOrder({ store, timer: 30 });
  await until(
    async () => (await activeOrders(token(customer, "customer"))).json?.orders?.some((o) => o.order_id === order),
    () => `GET /orders/active never showed ${order}`,
  );
  const merchant = await ctx.connect(url(2), { jwt: token(uid("merch"), "merchant", { store_ids: [store] }) });
  const e = await merchant.rec.next("merchant:new_order");
  shape(e.data, { event_id: createdId, order_id: order, store_id: store, timer: 30 }, "merchant:new_order");
  e.ack({ accepted: true });
  const o = await outcome(createdId, `merchant_${store}`);
  eq(o.outcome, "acked", "outcome");
});

test("events.order_status_update.in_order", async (ctx) => {
  const store = uid("store");
  const { order, customer } = await newOrder({ store });
  const cust = await ctx.connect(url(0), { jwt: token(customer, "customer") });
  const merch = await ctx.connect(url(1), { jwt: token(uid("merch"), "merchant", { store_ids: [store] }), transports: ["polling"] });
  const statuses = Array.from({ length: 10 }, (_, i) => `step-${i + 1}`);
  const ids = [];
  for (const status of statuses) ids.push(await publish("order.status", { order_id: order, status }));
  for (const [who, conn] of [["customer", cust], ["merchant", merch]]) {
    const got = [];
    for (let i = 0; i < statuses.length; i += 1) {
      got.push((await conn.rec.next("order:status_update", { where: (d) => d?.order_id === order })).data);
    }
    eq(got.map((d) => d.event_id), ids, `${who}: event ids in append order`);
    eq(got.map((d) => d.status), statuses, `${who}: statuses in append order`);
    got.slice(1).forEach((d, i) => eq(d.seq, got[i].seq + 1, `${who}: seq after ${got[i].seq}`));
  }
});

test("events.delivery_new_request.accept", async (ctx) => {
  const driverId = uid("driver");
  const driver = await ctx.connect(url(2), { jwt: token(driverId, "driver") });
  const order = uid("order");
  const pickup = { lat: 12.9716, lng: 77.5946, address: "MG Road" };
  const drop = { lat: 12.9352, lng: 77.6245 };
  const id = await publish("delivery.request", { order_id: order, driver_id: driverId, pickup, drop, fare: 50, timer_s: 20 });
  const e = await driver.rec.next("delivery:new_request");
  shape(e.data, { event_id: id, order_id: order, fare: 50, timer: 20 }, "delivery:new_request");
  same(e.data.pickup, pickup, "pickup");
  same(e.data.drop, drop, "drop");
  assert(e.ack, "delivery:new_request came without an ack request");
  e.ack({ accepted: true });
  const o = await outcome(id, `driver_${driverId}`);
  shape(o, { event: "delivery:new_request", order_id: order, outcome: "acked" }, "outcome");
  same(o.response, { accepted: true }, "outcome response");
});

test("events.admin_alert", async (ctx) => {
  const admin = await ctx.connect(url(1), { jwt: token(uid("admin"), "admin"), via: "query", transports: ["polling"] });
  const message = `interop ${uid("alert")}`;
  const id = await publish("admin.alert", { level: "warning", message, region: "blr", count: 3 });
  const e = await admin.rec.next("admin:alert", { where: (d) => d?.message === message });
  shape(e.data, { event_id: id, level: "warning", message, region: "blr", count: 3 }, "admin:alert");
});

// ------------------------------------------------------------ locations

/** A customer's order assigned to a driver, both connected (on different nodes). */
async function assignedOrder(ctx, { driverTransports = ["websocket"] } = {}) {
  const driverId = uid("driver");
  const { order, customer, store } = await newOrder();
  const cust = await ctx.connect(url(0), { jwt: token(customer, "customer"), transports: ["websocket"] });
  const driver = await ctx.connect(url(1), { jwt: token(driverId, "driver"), transports: driverTransports });
  await publish("order.assigned", { order_id: order, driver_id: driverId });
  // Events of one order are handled in order: once the driver has this
  // update (through driver_{id}), it is in order_{id} too.
  const id = await publish("order.status", { order_id: order, status: "picked_up" });
  await statusUpdate(driver, order, "picked_up", id, "driver");
  await statusUpdate(cust, order, "picked_up", id, "customer");
  return { order, customer, store, driverId, cust, driver };
}

const LOCATION = { lat: 12.9716, lng: 77.5946, heading: 90, speed: 40 };

test("location.update_with_ack", async (ctx) => {
  const { order, cust, driver } = await assignedOrder(ctx);
  const ack = await driver.request("driver:location_update", LOCATION);
  same(ack, { ok: true }, "ack");
  const e = await cust.rec.next("order:driver_location");
  shape(e.data, { order_id: order, lat: LOCATION.lat, lng: LOCATION.lng, heading: 90, speed: 40, ts: isRecentMs }, "order:driver_location");
  await driver.rec.none("order:driver_location", { ms: 200 });
});

test("location.update_without_ack", async (ctx) => {
  const { order, cust, driver } = await assignedOrder(ctx, { driverTransports: ["polling"] });
  driver.socket.emit("driver:location_update", { lat: -33.8688, lng: 151.2093 });
  const e = await cust.rec.next("order:driver_location");
  shape(e.data, { order_id: order, lat: -33.8688, lng: 151.2093, ts: isRecentMs }, "order:driver_location");
  assert(!("heading" in e.data) && !("speed" in e.data), `no heading/speed were sent: ${JSON.stringify(e.data)}`);
});

test("location.latest_on_connect", async (ctx) => {
  const { order, customer, driver } = await assignedOrder(ctx);
  same(await driver.request("driver:location_update", LOCATION), { ok: true }, "ack");
  // The customer's second device gets the latest location at once.
  const again = await ctx.connect(url(2), { jwt: token(customer, "customer"), transports: ["polling"] });
  const e = await again.rec.next("order:driver_location");
  shape(e.data, { order_id: order, lat: LOCATION.lat, lng: LOCATION.lng, ts: isRecentMs }, "order:driver_location");
});

test("location.invalid_payload_ack", async (ctx) => {
  const driver = await ctx.connect(url(2), { jwt: token(uid("driver"), "driver") });
  for (const bad of [{ lat: 91, lng: 0 }, { lat: "12.9", lng: 77.5 }, { lat: 12.9 }, { lat: 1, lng: 2, heading: 360 }, { lat: 1, lng: 2, speed: -1 }, "nonsense"]) {
    const ack = await driver.request("driver:location_update", bad);
    shape(ack, { ok: false, error: (v) => typeof v === "string" && v.length > 0 }, `ack for ${JSON.stringify(bad)}`);
  }
});

test("location.not_a_driver_ack", async (ctx) => {
  const cust = await ctx.connect(url(0), { jwt: token(uid("cust"), "customer") });
  const ack = await cust.request("driver:location_update", LOCATION);
  shape(ack, { ok: false, error: ":string" }, "ack");
});

// ------------------------------------------------------------ order rooms on request

test("subscribe.support_subscribe_and_unsubscribe", async (ctx) => {
  const { order, customer } = await newOrder();
  const cust = await ctx.connect(url(0), { jwt: token(customer, "customer") });
  const support = await ctx.connect(url(1), { jwt: token(uid("support"), "support"), transports: ["polling"] });
  same(await support.request("order:subscribe", { order_id: order }), { ok: true }, "subscribe ack");
  const id = await publish("order.status", { order_id: order, status: "preparing" });
  await statusUpdate(support, order, "preparing", id, "support");
  same(await support.request("order:unsubscribe", { order_id: order }), { ok: true }, "unsubscribe ack");
  const id2 = await publish("order.status", { order_id: order, status: "ready" });
  await statusUpdate(cust, order, "ready", id2, "customer");
  await support.rec.none("order:status_update", { ms: 300 });
});

test("subscribe.refused", async (ctx) => {
  const { order } = await newOrder();
  const other = await ctx.connect(url(2), { jwt: token(uid("cust"), "customer") });
  same(await other.request("order:subscribe", { order_id: order }), { ok: false, error: "not allowed" }, "another customer's order");
  const ack = await other.request("order:subscribe", { id: order });
  shape(ack, { ok: false, error: (v) => typeof v === "string" && v.startsWith("invalid payload") }, "ack for a payload without order_id");
});

// ------------------------------------------------------------ recovery

/** A customer with one order and its first update, the auth built per connect. */
async function customerWithUpdate(ctx, { reconnection = false, reconnectionDelay } = {}) {
  const { order, customer } = await newOrder();
  const jwt = token(customer, "customer");
  const state = { last: undefined };
  const conn = await ctx.connect(url(1), {
    // A function: the official client calls it on every (re)connect.
    auth: (cb) => cb(state.last ? { token: jwt, last_event_id: state.last } : { token: jwt }),
    reconnection,
  });
  if (reconnectionDelay) conn.socket.io.reconnectionDelay(reconnectionDelay).reconnectionDelayMax(reconnectionDelay);
  const first = await publish("order.status", { order_id: order, status: "preparing" });
  await statusUpdate(conn, order, "preparing", first, "customer");
  state.last = first;
  return { order, customer, jwt, conn, state, first };
}

async function waitStatus(jwt, order, status) {
  await until(
    async () => (await activeOrders(jwt)).json?.orders?.find((o) => o.order_id === order)?.status === status,
    () => `GET /orders/active never showed ${order} as ${status}`,
  );
}

test("recovery.reconnect_with_last_event_id", async (ctx) => {
  const { order, jwt, conn } = await customerWithUpdate(ctx);
  conn.socket.disconnect();
  const missed = [];
  for (const status of ["cooking", "ready"]) missed.push(await publish("order.status", { order_id: order, status }));
  await waitStatus(jwt, order, "ready"); // handled while the client was away
  const before = conn.rec.events.length;
  conn.socket.connect();
  const done = await conn.rec.next("sync:done");
  same(done.data, { recovered: true }, "sync:done");
  const replay = conn.rec.events.slice(before);
  eq(
    replay.map((e) => `${e.name}:${e.data?.event_id ?? JSON.stringify(e.data)}`),
    [...missed.map((id) => `order:status_update:${id}`), 'sync:done:{"recovered":true}'],
    "events after reconnecting",
  );
  shape(replay[0].data, STATUS_SHAPE(order, "cooking", missed[0]), "replayed update");
  // Live again, and GET /orders/active agrees.
  const live = await publish("order.status", { order_id: order, status: "on_the_way" });
  await statusUpdate(conn, order, "on_the_way", live, "customer");
  const res = await activeOrders(jwt, url(2));
  eq(res.status, 200, "GET /orders/active status");
  const mine = res.json.orders.find((o) => o.order_id === order);
  shape(mine, { order_id: order, status: "on_the_way", updated_at: isRfc3339, customer_id: ":string", store_id: ":string" }, "active order");
});

test("recovery.automatic_reconnect_after_transport_loss", async (ctx) => {
  const { order, conn } = await customerWithUpdate(ctx, { reconnection: true, reconnectionDelay: 1000 });
  const reconnected = new Promise((resolve) => conn.socket.io.once("reconnect", resolve));
  conn.socket.io.engine.close(); // as a dropped network: the client reconnects by itself
  const missed = await publish("order.status", { order_id: order, status: "cooking" });
  await Promise.race([reconnected, sleep(8000).then(() => Promise.reject(new Error("no reconnect within 8 s")))]);
  const done = await conn.rec.next("sync:done");
  same(done.data, { recovered: true }, "sync:done");
  await statusUpdate(conn, order, "cooking", missed, "customer");
  await conn.rec.none("order:status_update", { ms: 300 });
});

test("recovery.sync_event", async (ctx) => {
  const { order, conn, first } = await customerWithUpdate(ctx);
  const second = await publish("order.status", { order_id: order, status: "cooking" });
  await statusUpdate(conn, order, "cooking", second, "customer");
  const ackP = conn.request("sync", { last_event_id: first });
  await statusUpdate(conn, order, "cooking", second, "customer (replayed)");
  same((await conn.rec.next("sync:done")).data, { recovered: true }, "sync:done");
  same(await ackP, { ok: true, recovered: true }, "sync ack");
  await conn.rec.none("order:status_update", { ms: 200, where: (d) => d?.event_id === first });
});

test("recovery.sync_not_recovered", async (ctx) => {
  const { conn } = await customerWithUpdate(ctx);
  const ack = await conn.request("sync", { last_event_id: "1-0" });
  same((await conn.rec.next("sync:done")).data, { recovered: false }, "sync:done");
  same(ack, { ok: true, recovered: false }, "sync ack");
  await conn.rec.none("order:status_update", { ms: 200 });
});

test("recovery.sync_invalid_payload", async (ctx) => {
  const conn = await ctx.connect(url(0), { jwt: token(uid("cust"), "customer") });
  const ack = await conn.request("sync", { since: "1-0" });
  shape(ack, { ok: false, error: (v) => typeof v === "string" && v.startsWith("invalid payload") }, "sync ack");
});

// ------------------------------------------------------------ order chat (§7)

/** The unix ms of a stream id: a chat message's `ts` is its entry's time. */
const idMs = (id) => Number(id.split("-")[0]);

/** A chat:send ack that accepted the message: its event id and ts, checked. */
function sent(ack, what) {
  shape(ack, { ok: true, event_id: isStreamId, ts: isRecentMs }, `${what} chat:send ack`);
  eq(ack.ts, idMs(ack.event_id), `${what}: ts is the time of event_id`);
  return ack;
}

const MESSAGE_SHAPE = (order, ack, fromId, fromRole, text) => ({
  event_id: ack.event_id,
  order_id: order,
  text,
  ts: ack.ts,
  from: (v) => v?.id === fromId && v?.role === fromRole && Object.keys(v).length === 2,
});

/** Receives the chat:message `eventId`, checked against the send's ack. */
async function chatMessage(conn, order, ack, fromId, fromRole, text, what) {
  const e = await conn.rec.next("chat:message", { where: (d) => d?.event_id === ack.event_id });
  shape(e.data, MESSAGE_SHAPE(order, ack, fromId, fromRole, text), `${what} chat:message`);
  return e.data;
}

test("chat.send_and_receive", async (ctx) => {
  // The customer and the driver on different nodes.
  const { order, customer, driverId, cust, driver } = await assignedOrder(ctx);
  const hello = sent(await cust.request("chat:send", { order_id: order, text: "I'm at the gate", client_msg_id: "m-1" }), "customer");
  const got = await chatMessage(driver, order, hello, customer, "customer", "I'm at the gate", "driver");
  eq(got.client_msg_id, "m-1", "client_msg_id given back");
  // The sender's own sockets get it too, the same payload.
  same(await chatMessage(cust, order, hello, customer, "customer", "I'm at the gate", "customer (own)"), got, "sender's copy");
  const reply = sent(await driver.request("chat:send", { order_id: order, text: "coming down" }), "driver");
  const back = await chatMessage(cust, order, reply, driverId, "driver", "coming down", "customer");
  assert(!("client_msg_id" in back), `no client_msg_id was sent: ${JSON.stringify(back)}`);
  await chatMessage(driver, order, reply, driverId, "driver", "coming down", "driver (own)");
  // One sequence: the reply comes after the first message, everywhere.
  for (const [who, conn] of [["customer", cust], ["driver", driver]]) {
    const ids = conn.rec.events.filter((e) => e.name === "chat:message").map((e) => e.data.event_id);
    eq(ids, [hello.event_id, reply.event_id], `${who}: messages in send order`);
  }
});

test("chat.history_before_and_limit", async (ctx) => {
  const { order, customer, driverId, cust, driver } = await assignedOrder(ctx);
  const acks = [];
  for (let i = 0; i < 5; i += 1) {
    const [who, conn] = i % 2 === 0 ? ["customer", cust] : ["driver", driver];
    acks.push(sent(await conn.request("chat:send", { order_id: order, text: `m${i}` }), who));
  }
  // Every message delivered before reading (history is written with it).
  const last = await chatMessage(cust, order, acks[4], customer, "customer", "m4", "customer");
  const texts = (ack, what) => {
    shape(ack, { ok: true, messages: ":array" }, `${what} chat:history ack`);
    return ack.messages.map((m) => m.text);
  };
  const all = await driver.request("chat:history", { order_id: order });
  eq(texts(all, "all"), ["m0", "m1", "m2", "m3", "m4"], "history, oldest first");
  same(all.messages[4], last, "a history entry is the chat:message");
  shape(all.messages[1], MESSAGE_SHAPE(order, acks[1], driverId, "driver", "m1"), "history entry");
  eq(texts(await cust.request("chat:history", { order_id: order, limit: 2 }), "newest"), ["m3", "m4"], "limit 2");
  eq(texts(await cust.request("chat:history", { order_id: order, before: acks[3].event_id, limit: 2 }), "page"), ["m1", "m2"], "before m3, limit 2");
  eq(texts(await driver.request("chat:history", { order_id: order, before: acks[1].event_id }), "first page"), ["m0"], "before m1");
  eq(texts(await driver.request("chat:history", { order_id: order, before: acks[0].event_id }), "start"), [], "before the first");
});

test("chat.typing_reaches_the_other_only", async (ctx) => {
  const { order, customer, driverId, cust, driver } = await assignedOrder(ctx);
  same(await cust.request("chat:typing", { order_id: order }), { ok: true }, "chat:typing ack");
  const e = await driver.rec.next("chat:typing");
  same(e.data, { order_id: order, from: { id: customer, role: "customer" } }, "chat:typing");
  // The driver writes after the notice reached it: by the time the customer
  // has that message, a notice to the sender would have come before it.
  const reply = sent(await driver.request("chat:send", { order_id: order, text: "ok" }), "driver");
  await chatMessage(cust, order, reply, driverId, "driver", "ok", "customer");
  eq(cust.rec.names().filter((n) => n === "chat:typing"), [], "typing notices the sender got");
  // Typing is never recorded: the history holds the message only.
  eq((await cust.request("chat:history", { order_id: order })).messages.map((m) => m.event_id), [reply.event_id], "history");
});

test("chat.refused", async (ctx) => {
  const { order, store, cust, driver } = await assignedOrder(ctx);
  const stranger = await ctx.connect(url(2), { jwt: token(uid("cust"), "customer") });
  const merchant = await ctx.connect(url(2), { jwt: token(uid("merch"), "merchant", { store_ids: [store] }), transports: ["polling"] });
  const notAllowed = { ok: false, error: "not allowed" };
  same(await stranger.request("chat:send", { order_id: order, text: "hi" }), notAllowed, "a foreign order's chat:send");
  same(await stranger.request("chat:history", { order_id: order }), notAllowed, "a foreign order's chat:history");
  same(await merchant.request("chat:send", { order_id: order, text: "hi" }), notAllowed, "the store's merchant: chat:send");
  same(await merchant.request("chat:typing", { order_id: order }), notAllowed, "the store's merchant: chat:typing");
  same(await driver.request("chat:send", { order_id: uid("order"), text: "hi" }), notAllowed, "the driver, another order");
  for (const bad of [{ order_id: order, text: " \n " }, { order_id: order }, "hello"]) {
    same(await cust.request("chat:send", bad), { ok: false, error: "invalid message" }, `chat:send ${JSON.stringify(bad)}`);
  }
  // After the terminal status the chat is read-only.
  const ok = sent(await cust.request("chat:send", { order_id: order, text: "thanks" }), "customer");
  const end = await publish("order.status", { order_id: order, status: "delivered" });
  await statusUpdate(driver, order, "delivered", end, "driver");
  same(await driver.request("chat:send", { order_id: order, text: "bye" }), { ok: false, error: "order not active" }, "chat:send after delivered");
  eq((await cust.request("chat:history", { order_id: order })).messages.map((m) => m.event_id), [ok.event_id], "history after delivered");
});

// ------------------------------------------------------------ token refresh (§7)

test("auth.refresh", async (ctx) => {
  const [merch, kept, added] = [uid("merch"), uid("store"), uid("store")];
  // A token inside the notice period (60 s): auth:expiring comes at once.
  const shortExp = now() + 30;
  const conn = await ctx.connect(url(1), { jwt: sign({ sub: merch, role: "merchant", store_ids: [kept], exp: shortExp }) });
  same((await conn.rec.next("auth:expiring")).data, { exp: shortExp }, "auth:expiring");
  const exp = now() + 900;
  const ack = await conn.request("auth:refresh", { token: sign({ sub: merch, role: "merchant", store_ids: [kept, added], exp }) });
  same(ack, { ok: true, exp }, "auth:refresh ack");
  // The added store's orders now reach the connection.
  const { order } = await newOrder({ store: added, timer: 30 });
  const e = await conn.rec.next("merchant:new_order");
  eq(e.data.order_id, order, "order of the added store");
  e.ack({ accepted: true });
});

test("auth.refresh_refused", async (ctx) => {
  const customer = uid("cust");
  const conn = await ctx.connect(url(2), { jwt: token(customer, "customer") });
  const refusals = [
    ["bad signature", { token: sign({ sub: customer, role: "customer", exp: now() + 600 }, { secret: "not-the-secret" }) }, "invalid token"],
    ["expired", { token: sign({ sub: customer, role: "customer", exp: now() - 120 }) }, "token expired"],
    ["another user", { token: token(uid("cust"), "customer") }, "invalid claims"],
    ["another role", { token: token(customer, "driver") }, "role not allowed"],
    ["no token", {}, "missing token"],
  ];
  for (const [what, payload, error] of refusals) {
    same(await conn.request("auth:refresh", payload), { ok: false, error }, `auth:refresh, ${what}`);
  }
  assert(conn.socket.connected, "disconnected by a refused refresh");
  eq((await conn.request("sync", { last_event_id: "0-0" })).ok, true, "sync after the refusals");
});

// ------------------------------------------------------------ HTTP for clients

test("http.orders_active", async (ctx) => {
  const { order, customer, driverId, driver } = await assignedOrder(ctx);
  same(await driver.request("driver:location_update", LOCATION), { ok: true }, "location ack");
  const want = { order_id: order, status: "picked_up", updated_at: isRfc3339, customer_id: customer, driver_id: driverId, store_id: ":string" };
  for (const [who, jwt] of [["customer", token(customer, "customer")], ["driver", token(driverId, "driver")]]) {
    let mine;
    await until(
      async () => {
        const res = await activeOrders(jwt);
        mine = res.json?.orders?.find((o) => o.order_id === order);
        return res.status === 200 && mine?.driver_location;
      },
      () => `${who}: no driver_location in GET /orders/active: ${JSON.stringify(mine)}`,
    );
    shape(mine, want, `${who}'s active order`);
    shape(mine.driver_location, { lat: LOCATION.lat, lng: LOCATION.lng, ts: isRecentMs }, "driver_location");
  }
  same((await activeOrders(token(uid("admin"), "admin"))).json, { orders: [] }, "admin's active orders");
  const expired = await activeOrders(sign({ sub: customer, role: "customer", exp: now() - 120 }));
  eq(expired.status, 401, "status for an expired token");
  same(expired.json, { error: "token expired" }, "body for an expired token");
  const missing = await activeOrders(undefined);
  eq(missing.status, 401, "status without a token");
  same(missing.json, { error: "missing token" }, "body without a token");
});

await run("javascript");
