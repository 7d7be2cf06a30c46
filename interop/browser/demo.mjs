// The /demo page in headless Chromium, fed a small city through the public
// interface: drivers and a merchant as official Socket.IO clients, and the
// backend's events through POST /api/events. Checks that the page
// connects, that a driver's dot moves, that status changes, alerts and
// merchant offer outcomes appear, that the chat panel of a selected order
// shows its history, a participant's typing and live messages, and sends
// the admin's, and takes a screenshot; then the merchant leaves and its
// stores must turn offline on the map (presence).
//
// Driven by tests/it/demo.rs; by hand:
//   DEMO_PAGE_URL=http://127.0.0.1:3000 RELAY_API_KEY=... RELAY_JWT_SECRET=... \
//   DEMO_SCREENSHOT=target/demo-screenshot.png node interop/browser/demo.mjs
//
// Environment:
//   DEMO_PAGE_URL     node whose /demo the browser opens (RELAY_DEMO on)
//   DEMO_PEER_URL     node the drivers, the merchant and the events go to
//                     (default: DEMO_PAGE_URL; another node shows the cluster at work)
//   RELAY_API_KEY     the nodes' publish API key
//   RELAY_JWT_SECRET  their HS256 secret, to sign the clients' tokens
//   DEMO_SCREENSHOT   where the screenshot goes
//   CHROMIUM          browser binary (default /usr/bin/chromium)
//   DEMO_DEADLINE_MS  the whole run's deadline (default 60000)

import { createHmac } from "node:crypto";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";

import { chromium } from "playwright-core";
import { io } from "socket.io-client";

const started = Date.now();
const log = (msg) => console.log(`[demo ${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return value;
}

const PAGE_URL = required("DEMO_PAGE_URL").replace(/\/$/, "");
const PEER_URL = (process.env.DEMO_PEER_URL || PAGE_URL).replace(/\/$/, "");
const API_KEY = required("RELAY_API_KEY");
const SECRET = required("RELAY_JWT_SECRET");
const SCREENSHOT = resolve(required("DEMO_SCREENSHOT"));
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const DEADLINE_MS = Number(process.env.DEMO_DEADLINE_MS || 60000);
const WAIT_MS = 15000;

let browser;
let userDataDir;
const sockets = [];

async function cleanup() {
  for (const s of sockets) s.disconnect();
  if (browser) await browser.close().catch(() => {});
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
}

async function fail(message) {
  console.error(`[demo] FAILED: ${message}`);
  await cleanup();
  process.exit(1);
}

const deadline = setTimeout(() => fail(`not done within ${DEADLINE_MS} ms`), DEADLINE_MS);

// ------------------------------------------------------------ relay clients

function token(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ iat: now, exp: now + 600, ...claims });
  const signature = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

async function publish(type, data) {
  const response = await fetch(`${PEER_URL}/api/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ type, data }),
    signal: AbortSignal.timeout(5000),
  });
  if (response.status !== 202) {
    await fail(`publish ${type}: HTTP ${response.status} ${await response.text()}`);
  }
}

function client(claims) {
  const socket = io(PEER_URL, {
    transports: ["websocket"],
    auth: { token: token(claims) },
    reconnectionDelay: 200,
  });
  sockets.push(socket);
  return socket;
}

function connected(socket, who) {
  return new Promise((ok, ko) => {
    const timer = setTimeout(() => ko(new Error(`${who} did not connect within ${WAIT_MS} ms`)), WAIT_MS);
    socket.once("connect", () => {
      clearTimeout(timer);
      ok();
    });
    socket.on("connect_error", (e) => log(`${who}: connect_error ${e.message}`));
  });
}

// ------------------------------------------------------------ a small city

const CENTER = { lat: 12.9716, lng: 77.5946 };
const at = (dLat, dLng) => ({ lat: CENTER.lat + dLat, lng: CENTER.lng + dLng });

const STORES = {
  "s-dosa": { name: "Dosa Corner", ...at(0.004, 0.006) },
  "s-pizza": { name: "Pizza Point", ...at(-0.007, -0.009) },
  "s-chai": { name: "Chai Stop", ...at(0.009, -0.007) },
};
const DROP_1 = at(-0.006, 0.013);
const DROP_2 = at(0.001, -0.017);

// The driver the checks follow rides from its start to the store, then to the customer.
const ROUTE = [at(0.012, 0.014), STORES["s-dosa"], DROP_1];
const IDLE = {
  "d-anu": at(-0.011, 0.004),
  "d-ravi": at(-0.004, -0.012),
  "d-meera": at(0.013, -0.002),
  "d-kiran": at(0.002, 0.017),
  "d-sam": at(-0.013, -0.015),
};

function along(route, t) {
  const legs = route.length - 1;
  const x = Math.min(Math.max(t, 0), 0.9999) * legs;
  const i = Math.floor(x);
  const f = x - i;
  const [a, b] = [route[i], route[i + 1]];
  return { lat: a.lat + (b.lat - a.lat) * f, lng: a.lng + (b.lng - a.lng) * f };
}

function startDriver(id, where, accepts) {
  const socket = client({ sub: id, role: "driver" });
  socket.on("delivery:new_request", (offer, ack) => {
    const yes = accepts(offer.order_id);
    log(`${id}: offer for ${offer.order_id}: ${yes ? "accept" : "decline"}`);
    ack({ accepted: yes });
  });
  const send = () => {
    if (!socket.connected) return;
    const p = where();
    socket.emit("driver:location_update", { lat: p.lat, lng: p.lng, speed: 25 });
  };
  const timer = setInterval(send, 300);
  socket.on("disconnect", () => clearInterval(timer));
  return socket;
}

// ------------------------------------------------------------ the page

async function openPage() {
  userDataDir = mkdtempSync(join(tmpdir(), "relay-demo-chromium-"));
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1440, height: 900 },
    timeout: WAIT_MS,
  });
  const page = browser.pages()[0] || (await browser.newPage());
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console error: ${m.text()}`);
  });
  // Nothing may come from anywhere but the relay: no CDN, no tiles.
  const origin = new URL(PAGE_URL).origin;
  page.on("request", (r) => {
    if (!r.url().startsWith(origin) && !r.url().startsWith("data:")) {
      problems.push(`request outside the relay: ${r.url()}`);
    }
  });
  const response = await page.goto(`${PAGE_URL}/demo`, { timeout: WAIT_MS });
  if (response.status() !== 200) await fail(`GET /demo: HTTP ${response.status()}`);
  return { page, problems };
}

async function until(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 100 });
  } catch (e) {
    const state = await page.evaluate(() => JSON.stringify(window.__demo)).catch(() => "?");
    await fail(`${what}: not within ${WAIT_MS} ms (${e.message.split("\n")[0]}); page state: ${state}`);
  }
  log(`ok: ${what}`);
}

// ------------------------------------------------------------ the run

async function main() {
  const { page, problems } = await openPage();
  await until(page, "the page connects", () => window.__demo && window.__demo.connected === true);
  const conn = await page.evaluate(() => ({ transport: window.__demo.transport, node: window.__demo.node }));
  log(`page connected over ${conn.transport} to node ${conn.node}`);
  if (!["websocket", "polling"].includes(conn.transport)) await fail(`unexpected transport ${conn.transport}`);

  // The merchant owns every store but one: orders of s-closed find nobody.
  const merchant = client({ sub: "m-1", role: "merchant", store_ids: Object.keys(STORES) });
  merchant.on("merchant:new_order", (offer, ack) => {
    if (offer.order_id === "o-103") return ack({ accepted: false, reason: "kitchen closing" });
    if (offer.order_id === "o-104") return; // never answers: a timeout
    ack({ accepted: true });
  });

  let progress = 0; // of the followed driver along its route
  const followed = startDriver("d-test", () => along(ROUTE, progress), (order) => order === "o-101");
  const idle = Object.entries(IDLE).map(([id, home], n) =>
    startDriver(
      id,
      () => {
        const t = Date.now() / 4000 + n;
        return { lat: home.lat + Math.sin(t) * 0.0008, lng: home.lng + Math.cos(t * 0.8) * 0.0008 };
      },
      (order) => id === "d-anu" && order === "o-102",
    ),
  );
  await Promise.all([
    connected(merchant, "merchant"),
    connected(followed, "d-test"),
    ...idle.map((s, n) => connected(s, Object.keys(IDLE)[n])),
  ]).catch((e) => fail(e.message));
  log("drivers and merchant connected");
  const ride = setInterval(() => {
    progress = Math.min(progress + 0.012, 0.45);
  }, 300);

  const items = [{ sku: "masala-dosa", qty: 2 }];
  await publish("order.created", { order_id: "o-101", customer_id: "c-1", store_id: "s-dosa", items });
  await publish("order.created", { order_id: "o-102", customer_id: "c-2", store_id: "s-pizza", items });
  // Where store and customer are can also come as hints on order.created
  // (as `relay-sim simulate` sends them): the relay passes them over.
  const chai = { lat: STORES["s-chai"].lat, lng: STORES["s-chai"].lng, name: STORES["s-chai"].name };
  await publish("order.created", {
    order_id: "o-103",
    customer_id: "c-3",
    store_id: "s-chai",
    items,
    pickup: chai,
    drop: at(0.016, -0.012),
  });
  await publish("order.created", {
    order_id: "o-104",
    customer_id: "c-4",
    store_id: "s-chai",
    items,
    accept_timeout_s: 2,
    pickup: chai,
    drop: at(0.003, -0.013),
  });
  await publish("order.created", {
    order_id: "o-105",
    customer_id: "c-5",
    store_id: "s-closed",
    items,
    accept_timeout_s: 1,
  });
  const request = (order, store, drop, target) =>
    publish("delivery.request", {
      order_id: order,
      pickup: { lat: STORES[store].lat, lng: STORES[store].lng, name: STORES[store].name },
      drop,
      fare: 55,
      ...target,
    });
  await request("o-101", "s-dosa", DROP_1, { driver_id: "d-test" });
  await request("o-102", "s-pizza", DROP_2, { radius_m: 3000, max_drivers: 3, timer_s: 5 });
  await publish("order.assigned", { order_id: "o-101", driver_id: "d-test" });
  await publish("order.assigned", { order_id: "o-102", driver_id: "d-anu" });
  await publish("order.status", { order_id: "o-101", status: "accepted" });
  await publish("order.status", { order_id: "o-102", status: "accepted" });
  await publish("order.status", { order_id: "o-101", status: "preparing" });
  await publish("order.status", { order_id: "o-102", status: "preparing" });
  log("orders published");

  await until(page, "o-101 shows its timeline up to preparing", () =>
    document.querySelector('[data-order-id="o-101"] .step[data-status="preparing"]'),
  );
  await until(page, "the page subscribed to o-101", () => window.__demo.subscribed >= 1);

  // A driver dot moves on screen.
  await until(page, "d-test is on the map", () => window.__demo.drivers["d-test"]?.x != null);
  const first = await page.evaluate(() => window.__demo.drivers["d-test"]);
  await until(
    page,
    "d-test's dot moves",
    (p) => {
      const d = window.__demo.drivers["d-test"];
      return d && d.moves >= 3 && Math.hypot(d.x - p.x, d.y - p.y) > 8;
    },
    first,
  );
  await until(page, "d-test is drawn busy", () => window.__demo.drivers["d-test"].busy === true);
  await until(page, "locations arrive live through the order room", () => window.__demo.liveLocations > 0);

  // A status change appears, live.
  const liveBefore = await page.evaluate(() => window.__demo.liveStatusUpdates);
  progress = 0.5;
  await publish("order.status", { order_id: "o-101", status: "picked_up" });
  await until(page, "the picked_up status appears in o-101's timeline", () =>
    document.querySelector('[data-order-id="o-101"] .step[data-status="picked_up"]'),
  );
  await until(
    page,
    "it came as a live order:status_update",
    (n) => window.__demo.liveStatusUpdates > n,
    liveBefore,
  );
  clearInterval(ride);

  // Chat (CONTRACT §7). The customer writes before the order is selected:
  // the page reads it through chat:history on selection. Then the driver
  // types and answers, live; then the admin writes from the page.
  const customer = client({ sub: "c-1", role: "customer" });
  await connected(customer, "c-1").catch((e) => fail(e.message));
  const ask = (socket, event, data) =>
    new Promise((ok) =>
      socket.timeout(WAIT_MS).emit(event, data, (err, reply) => ok(err ? { ok: false, error: String(err) } : reply)),
    );
  const chatShows = (text) =>
    [...document.querySelectorAll("#chat-messages .chat-msg")].some((m) => m.textContent.includes(text));
  const written = await ask(customer, "chat:send", { order_id: "o-101", text: "Please ring the bell" });
  if (!written?.ok) await fail(`c-1 chat:send: ${JSON.stringify(written)}`);
  await page.click('#orders [data-order-id="o-101"]');
  await until(page, "the chat panel shows o-101's history", chatShows, "Please ring the bell");
  await until(page, "it came through chat:history", () => window.__demo.chatHistories >= 1);
  // "typing" is volatile: sent again until the page shows it.
  const typing = setInterval(() => followed.emit("chat:typing", { order_id: "o-101" }), 500);
  followed.emit("chat:typing", { order_id: "o-101" });
  await until(page, "the driver's typing is shown", () => window.__demo.chat.typing.includes("d-test"));
  clearInterval(typing);
  const answer = await ask(followed, "chat:send", { order_id: "o-101", text: "On my way, five minutes" });
  if (!answer?.ok) await fail(`d-test chat:send: ${JSON.stringify(answer)}`);
  await until(page, "the driver's message appears live in the chat panel", chatShows, "On my way, five minutes");
  await until(page, "as a live chat:message", () => window.__demo.liveChatMessages >= 1);
  const fromAdmin = new Promise((ok) =>
    customer.on("chat:message", (m) => {
      if (m.from?.role === "admin") ok(m);
    }),
  );
  await page.fill("#chat-text", "Support here: all good?");
  await page.click("#chat-send");
  const heard = await Promise.race([fromAdmin, new Promise((ok) => setTimeout(() => ok(null), WAIT_MS))]);
  if (heard?.text !== "Support here: all good?") await fail("the customer did not get the admin's message from the page");
  log("ok: the customer got the admin's message from the page");
  await until(page, "the admin's message is in the panel", chatShows, "Support here: all good?");

  const rideOn = setInterval(() => {
    progress = Math.min(progress + 0.04, 0.8);
  }, 300);

  await publish("admin.alert", { level: "warning", message: "Heavy rain in Indiranagar: expect delays", zone: "east" });
  await publish("admin.alert", { level: "critical", message: "Kitchen slammed: 14 open orders", store_id: "s-chai" });
  await publish("admin.alert", { level: "info", message: "Dinner rush: 3 stores above 20 open orders" });
  await until(page, "the admin alert appears", () =>
    [...document.querySelectorAll("#alerts .alert")].some((a) => a.textContent.includes("Heavy rain")),
  );

  await until(page, "an accepted merchant offer appears", () =>
    document.querySelector('#offers .offer[data-outcome="accepted"]'),
  );
  await until(page, "a declined merchant offer appears", () =>
    document.querySelector('#offers .offer[data-outcome="declined"]'),
  );
  await until(page, "an unanswered merchant offer times out", () =>
    document.querySelector('#offers .offer[data-outcome="timeout"]'),
  );
  await until(page, "an offer to a store nobody serves finds no recipient", () =>
    document.querySelector('#offers .offer[data-outcome="no_recipient"]'),
  );
  await publish("order.status", { order_id: "o-103", status: "rejected" });
  await publish("order.status", { order_id: "o-101", status: "on_the_way" });
  await until(page, "every driver and store is on the map", () => {
    const d = window.__demo.drivers;
    return (
      Object.keys(d).length >= 6 &&
      Object.values(d).every((p) => p.x != null) &&
      ["s-dosa", "s-pizza", "s-chai"].every((s) => window.__demo.stores.includes(s))
    );
  });
  await until(page, "driver offers are counted", () =>
    document.querySelector("#driver-offers b") !== null,
  );
  // Let the last pulse and the view's easing settle for a readable picture.
  await page.waitForTimeout(1500);

  // Presence: the merchant's stores are online while it is connected.
  await until(page, "the merchant's stores are drawn online", () =>
    ["s-dosa", "s-pizza", "s-chai"].every((s) => window.__demo.storesOnline[s] === true),
  );

  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT });
  clearInterval(rideOn);
  log(`screenshot: ${SCREENSHOT}`);

  // The merchant's only device leaves: once the grace (1 s in the test)
  // is over, its stores are offline on the map.
  merchant.disconnect();
  await until(page, "the stores go offline once the merchant left", () =>
    ["s-dosa", "s-pizza", "s-chai"].every((s) => window.__demo.storesOnline[s] === false),
  );

  if (problems.length) await fail(`the page reported problems:\n  ${problems.join("\n  ")}`);
  const summary = await page.evaluate(() => JSON.stringify({ ...window.__demo, drivers: undefined, orders: undefined }));
  log(`page state: ${summary}`);
  clearTimeout(deadline);
  await cleanup();
  log("all checks passed");
}

main().catch((e) => fail(e.stack || String(e)));
