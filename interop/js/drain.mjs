// A node drains under the official JavaScript client, behind a load
// balancer: its clients must reconnect by themselves, through the balancer,
// to the other nodes, and resync what they missed (CONTRACT §1: on SIGTERM a
// node "closes its clients' transports so that the official clients
// reconnect by themselves (to another node)").
//
// Driven by tests/it/interop.rs: this script connects its clients through
// RELAY_URLS (nginx), prints READY, and waits for a line `GO <node URL>` on
// stdin, which the driver writes once it has sent SIGTERM to that node (the
// one holding most of these clients). Settings as in lib.mjs; RELAY_NODES
// lists the nodes behind the balancer (events are published through a
// surviving one).

import { createInterface } from "node:readline";
import { eq, publish, run, same, sleep, test, token, uid, url } from "./lib.mjs";

const nodes = (process.env.RELAY_NODES || "").split(",").filter(Boolean);

/** The next line of stdin. */
const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

test("drain.clients_reconnect_through_the_balancer_and_resync", async (ctx) => {
  // Customers with an order each: half polling then upgraded (sticky), half
  // WebSocket only (spread). The auth is built per (re)connect.
  const clients = [];
  for (let i = 0; i < 8; i += 1) {
    const customer = uid("cust");
    const order = uid("order");
    await publish("order.created", { order_id: order, customer_id: customer, store_id: uid("store"), items: [], accept_timeout_s: 1 });
    const jwt = token(customer, "customer");
    const client = { customer, order, last: undefined, disconnects: 0 };
    client.conn = await ctx.connect(url(0), {
      auth: (cb) => cb(client.last ? { token: jwt, last_event_id: client.last } : { token: jwt }),
      transports: i % 2 ? ["websocket"] : undefined,
      reconnection: true,
    });
    // Back after 2 s: the events published meanwhile come as a replay.
    client.conn.socket.io.reconnectionDelay(2000).reconnectionDelayMax(2000).randomizationFactor(0);
    client.conn.socket.on("disconnect", () => {
      client.disconnects += 1;
    });
    const id = await publish("order.status", { order_id: order, status: "preparing" });
    const e = await client.conn.rec.next("order:status_update", { where: (d) => d?.event_id === id });
    client.last = e.data.event_id;
    clients.push(client);
  }
  console.log("READY");
  const [word, drained] = (await nextLine()).split(" ");
  eq(word, "GO", "line from the driver");
  const alive = nodes.find((n) => n !== drained);
  if (!alive) throw new Error(`RELAY_NODES (${nodes}) has no node besides ${drained}`);
  // The node has exited: its clients notice their transport closing (a
  // polling client when its pending request ends).
  const deadline = Date.now() + 10000;
  while (!clients.some((c) => c.disconnects > 0)) {
    if (Date.now() > deadline) throw new Error("no client noticed the drain within 10 s");
    await sleep(50);
  }
  await sleep(200);
  const affected = clients.filter((c) => c.disconnects > 0);
  // Events while they are away, through a node that stays up (as a
  // backend's XADD would be).
  const missed = new Map();
  for (const c of clients) {
    missed.set(c, await publish("order.status", { order_id: c.order, status: "cooking" }, alive));
  }
  for (const c of clients) {
    const deadline = Date.now() + 10000;
    while (!c.conn.socket.connected) {
      if (Date.now() > deadline) throw new Error(`${c.customer} did not reconnect within 10 s`);
      await sleep(50);
    }
    const e = await c.conn.rec.next("order:status_update", { where: (d) => d?.event_id === missed.get(c) });
    eq(e.data.status, "cooking", `${c.customer}: the update published during the drain`);
    await c.conn.rec.none("order:status_update", { ms: 0, where: (d) => d?.event_id === missed.get(c) });
    same(await c.conn.request("order:subscribe", { order_id: c.order }), { ok: true }, `${c.customer}: responsive after the drain`);
  }
  for (const c of affected) {
    const done = await c.conn.rec.next("sync:done");
    same(done.data, { recovered: true }, `${c.customer}: sync:done after reconnecting`);
    const at = (e) => c.conn.rec.events.indexOf(e);
    const replayed = c.conn.rec.events.find((e) => e.data?.event_id === missed.get(c));
    if (!(at(replayed) < at(done))) throw new Error(`${c.customer}: the missed update came after sync:done, not as a replay`);
  }
  console.log(`drain: ${affected.length} of ${clients.length} clients moved to other nodes`);
});

await run("javascript drain");
