// relay live city: the demo page's one script. No framework, no build step.
//
// Two sources, on purpose:
// - a real Socket.IO connection as an admin (token from /demo/token):
//   `admin:alert`, and `order:status_update` / `order:driver_location` /
//   `chat:message` / `chat:typing` of every active order it subscribes to.
//   These animate the page as they happen. Selecting an order opens its
//   chat: its history through `chat:history`, then live messages; an admin
//   may write to it too (CONTRACT §7).
// - a bounded snapshot polled from /demo/state every 1.5 s: idle drivers,
//   stores (with their presence: online or offline) and drops, offer
//   outcomes and orders from before the page opened, none of which an
//   admin socket is sent.
//
// Everything from the relay is untrusted text: it reaches the DOM through
// textContent only.

const POLL_MS = 1500;
const HIDDEN_POLL_MS = 10000;
const POLL_TIMEOUT_MS = 5000;
// The relay lets a socket send 20 client events a second by default
// (RELAY_CLIENT_EVENTS_PER_S); subscriptions go out at about 12 a second.
const SUBSCRIBE_EVERY_MS = 80;
const ENDED_LINGER_MS = 6000;
const DRIVER_GONE_MS = 2 * POLL_MS + 1000;
const MAX_ORDER_CARDS = 60;
const MAX_ALERTS = 40;
const MAX_OFFERS = 40;
const MAX_STORES = 200;
const MAX_CHAT = 200;
const TYPING_SHOWN_MS = 3000;
const TERMINAL = new Set(["delivered", "cancelled", "rejected"]);
// Statuses after which the driver heads to the customer rather than the store.
const TOWARDS_DROP = /picked|on_the_way|out_for|en_route|delivering|transit/;

const $ = (id) => document.getElementById(id);

const city = {
  drivers: new Map(),
  orders: new Map(),
  stores: new Map(),
  alerts: [],
  offers: [],
  driverOffers: null,
  pulses: [],
  polled: false,
};

// The chat panel: the selected order, messages per order (by event id,
// live ones for every subscribed order and the history of the selected
// one), who is typing where, and the page's own notes (a refused send).
const chat = {
  selected: null,
  byOrder: new Map(),
  typing: new Map(),
  notes: [],
  version: 0,
  shown: "",
};

const conn = {
  socket: null,
  state: "connecting",
  transport: "",
  // The node that signed the page's token, and every node that answered
  // the page lately (behind a load balancer, polls reach several).
  node: "",
  nodes: new Map(),
  engine: "",
  pollOk: true,
  subscribed: new Set(),
  queue: [],
  pausedUntil: 0,
  liveEvents: 0,
};

// For tests and the curious: what the page knows, as plain data.
const demo = {
  connected: false,
  transport: null,
  node: null,
  nodes: [],
  engine: null,
  polls: 0,
  pollErrors: 0,
  driverMoves: 0,
  liveLocations: 0,
  liveStatusUpdates: 0,
  liveAlerts: 0,
  get subscribed() {
    return conn.subscribed.size;
  },
  get drivers() {
    const now = performance.now();
    const out = {};
    for (const d of city.drivers.values()) {
      const p = position(d, now);
      const [x, y] = view.ready ? project(p.lat, p.lng) : [null, null];
      out[d.id] = { lat: p.lat, lng: p.lng, x, y, moves: d.moves, busy: d.busy };
    }
    return out;
  },
  get stores() {
    return [...city.stores.keys()];
  },
  // Presence as /demo/state last said: store id -> online.
  get storesOnline() {
    const out = {};
    for (const [id, s] of city.stores) out[id] = s.online === true;
    return out;
  },
  liveChatMessages: 0,
  chatHistories: 0,
  // The chat panel as shown: the selected order, its messages, who types.
  get chat() {
    return {
      selected: chat.selected,
      messages: chatOf(chat.selected).map((m) => ({ from: m.from?.id, role: m.from?.role, text: m.text })),
      typing: $("chat-typing").textContent,
    };
  },
  get orders() {
    const out = {};
    for (const o of city.orders.values()) {
      out[o.id] = { status: o.status, ended: o.endedAt !== null, steps: sortedSteps(o).map(stepLabel) };
    }
    return out;
  },
};
window.__demo = demo;

// ---------------------------------------------------------------- helpers

const pad = (n) => String(n).padStart(2, "0");

function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

function validPoint(p) {
  return p && Number.isFinite(p.lat) && Number.isFinite(p.lng);
}

const STATUS_COLORS = {
  placed: "#94a3b8",
  accepted: "#38bdf8",
  confirmed: "#38bdf8",
  preparing: "#a78bfa",
  ready: "#818cf8",
  ready_for_pickup: "#818cf8",
  assigned: "#2dd4bf",
  driver_assigned: "#2dd4bf",
  picked_up: "#f59e0b",
  on_the_way: "#fbbf24",
  out_for_delivery: "#fbbf24",
  arrived: "#fb923c",
  delivered: "#22c55e",
  cancelled: "#ef4444",
  rejected: "#ef4444",
};

function statusColor(status) {
  if (STATUS_COLORS[status]) return STATUS_COLORS[status];
  let h = 0;
  for (const c of String(status)) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h}, 65%, 65%)`;
}

// ---------------------------------------------------------------- model

function position(d, now) {
  const t = clamp((now - d.t0) / d.dur, 0, 1);
  return {
    lat: d.from.lat + (d.to.lat - d.from.lat) * t,
    lng: d.from.lng + (d.to.lng - d.from.lng) * t,
  };
}

// A driver's new location: the dot glides from where it is drawn now to
// the new point over about the time since the last update, so a driver
// reporting every few seconds moves continuously rather than jumping.
function moveDriver(id, lat, lng, heading, ts, busy) {
  if (!Number.isFinite(lat) || !Number.isFinite(lng)) return;
  const now = performance.now();
  let d = city.drivers.get(id);
  if (!d) {
    d = {
      id,
      from: { lat, lng },
      to: { lat, lng },
      t0: now,
      dur: 1,
      lastAt: now,
      ts: ts || 0,
      heading: Number.isFinite(heading) ? heading : null,
      busy: Boolean(busy),
      moves: 0,
      seenAt: Date.now(),
      trail: [],
    };
    city.drivers.set(id, d);
    return;
  }
  d.seenAt = Date.now();
  if (busy !== undefined) d.busy = busy;
  // The poll and the socket both report locations: only newer ones count.
  if (ts && ts <= d.ts) return;
  if (ts) d.ts = ts;
  if (d.to.lat === lat && d.to.lng === lng) return;
  const here = position(d, now);
  d.heading = Number.isFinite(heading) ? heading : bearing(here, { lat, lng });
  d.trail.push(here);
  if (d.trail.length > 10) d.trail.shift();
  d.from = here;
  d.to = { lat, lng };
  d.dur = clamp(now - d.lastAt, 300, 2500);
  d.t0 = now;
  d.lastAt = now;
  d.moves += 1;
  demo.driverMoves += 1;
}

function bearing(a, b) {
  const dx = (b.lng - a.lng) * Math.cos((a.lat * Math.PI) / 180);
  const dy = b.lat - a.lat;
  return ((Math.atan2(dx, dy) * 180) / Math.PI + 360) % 360;
}

function orderOf(id) {
  let o = city.orders.get(id);
  if (!o) {
    o = {
      id,
      status: "",
      storeId: "",
      customerId: "",
      driverId: null,
      pickup: null,
      drop: null,
      createdAt: Date.now(),
      steps: new Map(),
      endedAt: null,
      flashAt: 0,
      liveAt: 0,
      version: 0,
    };
    city.orders.set(id, o);
  }
  return o;
}

function sortedSteps(o) {
  return [...o.steps.values()].sort((a, b) => a.at - b.at || (a.eventId < b.eventId ? -1 : 1));
}

function stepLabel(s) {
  return s.status ?? `driver ${s.assigned}`;
}

function pulseAt(point, color) {
  if (validPoint(point)) city.pulses.push({ lat: point.lat, lng: point.lng, color, t0: performance.now() });
}

// Where an order's news is best shown on the map: its driver, else its
// drop, else its store.
function orderPoint(o) {
  const d = o.driverId && city.drivers.get(o.driverId);
  if (d) return position(d, performance.now());
  return o.drop || o.pickup;
}

function setStatus(o, status, live) {
  if (o.status === status) return;
  o.status = status;
  o.version += 1;
  if (city.polled || live) {
    o.flashAt = performance.now();
    pulseAt(orderPoint(o), statusColor(status));
  }
  if (TERMINAL.has(status) && o.endedAt === null) {
    o.endedAt = Date.now();
    // Everyone leaves an order's room at its final status.
    conn.subscribed.delete(o.id);
  }
}

function addStep(o, step) {
  if (o.steps.has(step.eventId)) return;
  o.steps.set(step.eventId, step);
  o.version += 1;
}

// ---------------------------------------------------------------- snapshot

// `askedAt`: when the poll was sent. A live status that came after that is
// newer than the snapshot's and stays.
function applySnapshot(s, askedAt) {
  heardFrom(s.node, s.engine);

  for (const d of s.drivers || []) {
    moveDriver(d.driver_id, d.lat, d.lng, d.heading, d.ts, d.busy);
  }
  const now = Date.now();
  for (const [id, d] of city.drivers) {
    if (now - d.seenAt > DRIVER_GONE_MS) city.drivers.delete(id);
  }

  for (const st of s.stores || []) {
    if (city.stores.size < MAX_STORES || city.stores.has(st.store_id)) city.stores.set(st.store_id, st);
  }

  const listed = new Set();
  for (const so of s.orders || []) {
    listed.add(so.order_id);
    const o = orderOf(so.order_id);
    const before = JSON.stringify([o.driverId, o.pickup, o.drop]);
    o.storeId = so.store_id;
    o.customerId = so.customer_id;
    o.driverId = so.driver_id || null;
    o.createdAt = so.created_at || o.createdAt;
    if (validPoint(so.pickup)) o.pickup = so.pickup;
    if (validPoint(so.drop)) o.drop = so.drop;
    if (JSON.stringify([o.driverId, o.pickup, o.drop]) !== before) o.version += 1;
    for (const step of so.timeline || []) {
      addStep(o, { eventId: step.event_id, status: step.status, assigned: step.assigned, at: step.at });
    }
    if (o.endedAt === null && o.liveAt < askedAt) setStatus(o, so.status, false);
    if (o.endedAt === null && !conn.subscribed.has(o.id) && !conn.queue.includes(o.id)) {
      conn.queue.push(o.id);
    }
  }
  for (const o of city.orders.values()) {
    // Gone from the cluster's active orders: it ended (or fell beyond the
    // snapshot's bound), with or without a final status seen here.
    if (!listed.has(o.id) && o.endedAt === null) {
      o.endedAt = now;
      o.version += 1;
      conn.subscribed.delete(o.id);
    }
  }

  mergeAlerts(s.alerts || [], false);
  mergeOffers(s.offers || []);
  city.driverOffers = s.driver_offers || null;
  city.polled = true;
  panelsDirty = true;
}

function mergeAlerts(alerts, live) {
  for (const a of alerts) {
    if (city.alerts.some((known) => known.eventId === a.event_id)) continue;
    const about = [];
    if (typeof a.order_id === "string") about.push(a.order_id);
    if (typeof a.store_id === "string") about.push(`store ${a.store_id}`);
    city.alerts.push({
      eventId: a.event_id,
      level: String(a.level ?? "info"),
      message: String(a.message ?? ""),
      about: about.join(" · "),
      at: a.at,
      fresh: live || city.polled,
    });
  }
  city.alerts.sort((a, b) => b.at - a.at);
  city.alerts.length = Math.min(city.alerts.length, MAX_ALERTS);
}

function mergeOffers(offers) {
  for (const f of offers) {
    const key = `${f.event_id} ${f.target}`;
    if (city.offers.some((known) => known.key === key)) continue;
    city.offers.push({ ...f, key, fresh: city.polled });
  }
  city.offers.sort((a, b) => b.at - a.at);
  city.offers.length = Math.min(city.offers.length, MAX_OFFERS);
}

let polling = false;

async function poll() {
  if (polling) return;
  polling = true;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), POLL_TIMEOUT_MS);
  const askedAt = performance.now();
  try {
    const response = await fetch("/demo/state", { signal: abort.signal, cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    applySnapshot(await response.json(), askedAt);
    demo.polls += 1;
    conn.pollOk = true;
  } catch {
    demo.pollErrors += 1;
    conn.pollOk = false;
  } finally {
    clearTimeout(timer);
    polling = false;
    showConnection();
    setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }
}

// ---------------------------------------------------------------- socket

async function fetchToken() {
  const response = await fetch("/demo/token", { cache: "no-store" });
  if (!response.ok) throw new Error(`token: HTTP ${response.status}`);
  const body = await response.json();
  conn.node = body.node || conn.node;
  heardFrom(body.node, body.engine);
  return body.token;
}

function heardFrom(node, engine) {
  if (node) conn.nodes.set(node, Date.now());
  if (engine) conn.engine = engine;
}

function connect() {
  const socket = window.io({
    path: "/socket.io/",
    // WebSocket first; long-polling when WebSocket cannot get through.
    transports: ["websocket", "polling"],
    tryAllTransports: true,
    // Called at every (re)connection: a fresh token each time.
    auth: (cb) => {
      fetchToken()
        .then((token) => cb({ token }))
        .catch(() => cb({}));
    },
    reconnectionDelay: 500,
    reconnectionDelayMax: 5000,
  });
  conn.socket = socket;

  socket.on("connect", () => {
    conn.state = "connected";
    conn.subscribed.clear();
    conn.queue = [...city.orders.values()].filter((o) => o.endedAt === null).map((o) => o.id);
    // Messages sent while the page was away: the selected chat's history again.
    if (chat.selected) loadHistory(chat.selected);
    const engine = socket.io.engine;
    conn.transport = engine.transport.name;
    engine.on("upgrade", (transport) => {
      conn.transport = transport.name;
      showConnection();
    });
    showConnection();
  });
  socket.on("disconnect", (reason) => {
    conn.state = "disconnected";
    conn.subscribed.clear();
    showConnection();
    // The relay ended the session (an expired token, say): the client does
    // not come back by itself from that one.
    if (reason === "io server disconnect") setTimeout(() => socket.connect(), 1000);
  });
  socket.on("connect_error", () => {
    conn.state = "disconnected";
    showConnection();
    // A refused handshake is not retried by the client itself.
    if (!socket.active) setTimeout(() => socket.connect(), 2000);
  });

  socket.on("admin:alert", (a) => {
    conn.liveEvents += 1;
    demo.liveAlerts += 1;
    mergeAlerts([{ ...a, at: Date.now() }], true);
    // Alerts about a place flash there: a point, a store or an order.
    const order = typeof a.order_id === "string" && city.orders.get(a.order_id);
    const where = validPoint(a) ? a : city.stores.get(a.store_id) || (order && orderPoint(order));
    pulseAt(where, "#ef4444");
    panelsDirty = true;
  });
  socket.on("order:status_update", (u) => {
    conn.liveEvents += 1;
    demo.liveStatusUpdates += 1;
    const o = orderOf(u.order_id);
    o.liveAt = performance.now();
    const at = Date.parse(u.timestamp) || Date.now();
    addStep(o, { eventId: u.event_id, status: u.status, at });
    setStatus(o, u.status, true);
    panelsDirty = true;
  });
  socket.on("chat:message", (m) => {
    conn.liveEvents += 1;
    demo.liveChatMessages += 1;
    mergeChat(m.order_id, [m]);
    // The message ends the sender's typing.
    const t = chat.typing.get(m.order_id);
    if (t && t.who === m.from?.id) chat.typing.delete(m.order_id);
  });
  socket.on("chat:typing", (t) => {
    if (typeof t.order_id !== "string") return;
    chat.typing.set(t.order_id, { who: t.from?.id, role: t.from?.role, until: Date.now() + TYPING_SHOWN_MS });
    chat.version += 1;
    panelsDirty = true;
  });
  socket.on("order:driver_location", (l) => {
    conn.liveEvents += 1;
    demo.liveLocations += 1;
    const o = city.orders.get(l.order_id);
    if (o && o.driverId) moveDriver(o.driverId, l.lat, l.lng, l.heading, l.ts, true);
  });
}

// One subscription per tick, so that a page opening on a busy city stays
// under the relay's per-socket event budget.
function pumpSubscriptions() {
  const socket = conn.socket;
  if (!socket || !socket.connected || performance.now() < conn.pausedUntil) return;
  const id = conn.queue.shift();
  if (id === undefined) return;
  const o = city.orders.get(id);
  if (!o || o.endedAt !== null || conn.subscribed.has(id)) return;
  socket.timeout(5000).emit("order:subscribe", { order_id: id }, (err, reply) => {
    if (!err && reply && reply.ok) {
      conn.subscribed.add(id);
    } else if (err || (reply && reply.error === "rate limited")) {
      conn.queue.push(id);
      // The relay allows fewer events a second than this page assumed.
      if (reply) conn.pausedUntil = performance.now() + 1000;
    }
    // "not allowed": the order is gone; the next poll says so.
  });
}

function showConnection() {
  const box = $("conn");
  box.dataset.state = conn.state;
  document.body.dataset.connected = String(conn.state === "connected");
  demo.connected = conn.state === "connected";
  demo.transport = conn.transport || null;
  demo.node = conn.node || null;
  demo.engine = conn.engine || null;
  let text;
  const recent = [...conn.nodes].filter(([, at]) => Date.now() - at < 30000).map(([n]) => n);
  demo.nodes = recent;
  if (conn.state === "connected") {
    // Without a load balancer the socket is on the one node the page
    // talks to; behind one, on one of the nodes that answered.
    const where = recent.length > 1 ? `nodes ${recent.sort().join(", ")}` : `node ${conn.node || "?"}`;
    text = `connected · ${conn.transport} · ${where}`;
    if (conn.engine) text += ` (${conn.engine})`;
  } else if (conn.state === "connecting") {
    text = "connecting…";
  } else {
    text = "disconnected · retrying";
  }
  if (!conn.pollOk) text += " · state unavailable";
  $("conn-text").textContent = text;
}

// ---------------------------------------------------------------- panels

let panelsDirty = true;
let panelsAt = 0;
const orderCards = new Map();

function renderPanels() {
  const now = Date.now();
  for (const [id, o] of city.orders) {
    if (o.endedAt !== null && now - o.endedAt > ENDED_LINGER_MS) {
      city.orders.delete(id);
      panelsDirty = true;
    }
  }
  renderOrders();
  renderChat();
  renderAlerts();
  renderOffers();
  const drivers = [...city.drivers.values()];
  const active = [...city.orders.values()].filter((o) => o.endedAt === null).length;
  $("stat-drivers").textContent = drivers.length;
  $("stat-busy").textContent = drivers.filter((d) => d.busy).length;
  $("stat-orders").textContent = active;
  $("stat-events").textContent = conn.liveEvents;
}

function renderOrders() {
  const list = $("orders");
  // A board, not a feed: oldest first, so cards keep their place while
  // their timelines grow, and leave from the top as orders complete.
  const orders = [...city.orders.values()]
    .sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1))
    .slice(0, MAX_ORDER_CARDS);
  const active = [...city.orders.values()].filter((o) => o.endedAt === null).length;
  $("orders-count").textContent = active ? `(${active})` : "";
  const keep = new Set(orders.map((o) => o.id));
  for (const [id, card] of orderCards) {
    if (!keep.has(id)) {
      card.node.remove();
      orderCards.delete(id);
    }
  }
  const flashing = performance.now() - 1200;
  orders.forEach((o, i) => {
    let card = orderCards.get(o.id);
    if (!card) {
      card = { node: el("li", "order"), version: -1 };
      card.node.dataset.orderId = o.id;
      card.node.addEventListener("click", () => selectOrder(o.id));
      orderCards.set(o.id, card);
    }
    const key = `${o.version}/${o.endedAt !== null}`;
    if (card.version !== key) {
      fillOrder(card.node, o);
      card.version = key;
    }
    card.node.classList.toggle("flash", o.flashAt > flashing);
    card.node.classList.toggle("selected", o.id === chat.selected);
    if (list.children[i] !== card.node) list.insertBefore(card.node, list.children[i] || null);
  });
}

function fillOrder(node, o) {
  node.replaceChildren();
  node.dataset.status = o.status;
  node.classList.toggle("ended", o.endedAt !== null);
  const head = el("div", "order-head");
  head.append(el("span", "order-id mono", o.id));
  const badge = el("span", "badge", o.status || "…");
  badge.style.setProperty("--c", statusColor(o.status));
  head.append(badge);
  node.append(head);

  const meta = [];
  if (o.storeId) meta.push(`store ${o.storeId}`);
  if (o.customerId) meta.push(`customer ${o.customerId}`);
  meta.push(o.driverId ? `driver ${o.driverId}` : "no driver yet");
  node.append(el("div", "order-meta", meta.join(" · ")));

  const steps = sortedSteps(o);
  if (steps.length) {
    const timeline = el("ol", "timeline");
    const current = [...steps].reverse().find((s) => s.status !== undefined);
    for (const s of steps) {
      const item = el("li", "step");
      if (s.status !== undefined) {
        item.dataset.status = s.status;
        item.style.setProperty("--c", statusColor(s.status));
      } else {
        item.dataset.assigned = s.assigned;
        item.style.setProperty("--c", STATUS_COLORS.assigned);
      }
      if (s === current) item.classList.add("current");
      item.append(el("b", "", stepLabel(s)), el("time", "", clock(s.at)));
      timeline.append(item);
    }
    node.append(timeline);
  }
}

// ---------------------------------------------------------------- chat

function chatOf(orderId) {
  const messages = chat.byOrder.get(orderId);
  if (!messages) return [];
  return [...messages.values()].sort((a, b) => compareIds(a.event_id, b.event_id));
}

// Stream ids `ms-seq`, compared as numbers.
function compareIds(a, b) {
  const [am, as] = String(a).split("-").map(Number);
  const [bm, bs] = String(b).split("-").map(Number);
  return am - bm || as - bs;
}

function mergeChat(orderId, messages) {
  if (typeof orderId !== "string") return;
  let known = chat.byOrder.get(orderId);
  if (!known) {
    known = new Map();
    chat.byOrder.set(orderId, known);
  }
  for (const m of messages) {
    if (m && typeof m.event_id === "string" && typeof m.text === "string") known.set(m.event_id, m);
  }
  // Bounded: the oldest go first.
  if (known.size > MAX_CHAT) {
    for (const m of chatOf(orderId).slice(0, known.size - MAX_CHAT)) known.delete(m.event_id);
  }
  chat.version += 1;
  panelsDirty = true;
}

function selectOrder(id) {
  if (chat.selected === id) return;
  chat.selected = id;
  chat.notes = [];
  chat.version += 1;
  panelsDirty = true;
  loadHistory(id);
}

function loadHistory(id) {
  const socket = conn.socket;
  if (!socket || !socket.connected) return;
  socket.timeout(5000).emit("chat:history", { order_id: id, limit: 50 }, (err, reply) => {
    if (!err && reply && reply.ok && Array.isArray(reply.messages)) {
      demo.chatHistories += 1;
      mergeChat(id, reply.messages);
    } else if (id === chat.selected) {
      note(`history unavailable: ${err ? "no answer" : reply?.error || "?"}`);
    }
  });
}

function note(text) {
  chat.notes.push({ text, at: Date.now() });
  chat.version += 1;
  panelsDirty = true;
}

function sendChat(event) {
  event.preventDefault();
  const input = $("chat-text");
  const text = input.value.trim();
  const id = chat.selected;
  const socket = conn.socket;
  if (!text || !id || !socket || !socket.connected) return;
  socket.timeout(5000).emit("chat:send", { order_id: id, text }, (err, reply) => {
    if (!err && reply && reply.ok) {
      input.value = "";
    } else {
      note(`not sent: ${err ? "no answer" : reply?.error || "?"}`);
    }
  });
}

function renderChat() {
  const now = Date.now();
  const id = chat.selected;
  const t = id && chat.typing.get(id);
  const typing = t && t.until > now ? `${t.who} (${t.role}) is typing…` : "";
  const key = `${id}/${chat.version}/${typing}`;
  if (chat.shown === key) return;
  chat.shown = key;
  $("chat").dataset.orderId = id || "";
  $("chat-order").textContent = id ? `· ${id}` : "";
  $("chat-form").hidden = !id;
  $("chat-typing").textContent = typing;
  $("chat-empty").textContent = id ? "No messages in this order yet." : "Select an order to see its chat.";
  const items = chatOf(id).map((m) => {
    const role = String(m.from?.role || "").replace(/[^a-z]/g, "");
    const item = el("li", `chat-msg role-${role}`);
    item.dataset.eventId = m.event_id;
    const who = m.from?.id ? `${m.from.id} (${m.from.role})` : m.from?.role || "?";
    item.append(el("time", "", clock(m.ts || now)), el("span", "from", who), el("span", "text", m.text));
    return item;
  });
  for (const n of chat.notes) {
    const item = el("li", "chat-msg note");
    item.append(el("time", "", clock(n.at)), el("span", "text", n.text));
    items.push(item);
  }
  const list = $("chat-messages");
  list.replaceChildren(...items);
  list.scrollTop = list.scrollHeight;
}

function renderAlerts() {
  const list = $("alerts");
  $("alerts-count").textContent = city.alerts.length ? `(${city.alerts.length})` : "";
  list.replaceChildren(
    ...city.alerts.map((a) => {
      const item = el("li", a.fresh ? "alert fresh" : "alert");
      item.dataset.eventId = a.eventId;
      a.fresh = false;
      const level = a.level.toLowerCase().replace(/[^a-z]/g, "");
      const msg = el("span", "msg", a.message);
      if (a.about) msg.append(el("span", "about", a.about));
      item.append(el("time", "", clock(a.at)), el("span", `level level-${level}`, a.level), msg);
      return item;
    }),
  );
}

function offerLabel(f) {
  if (f.outcome === "acked") {
    if (f.accepted === true) return "accepted";
    if (f.accepted === false) return "declined";
    return "acked";
  }
  return f.outcome;
}

function renderOffers() {
  const list = $("offers");
  list.replaceChildren(
    ...city.offers.map((f) => {
      const label = offerLabel(f);
      const item = el("li", f.fresh ? "offer fresh" : "offer");
      f.fresh = false;
      item.dataset.eventId = f.event_id;
      item.dataset.outcome = label;
      const store = String(f.target).replace(/^merchant_/, "");
      let who = `${f.order_id} · store ${store}`;
      if (f.reason) who += ` · “${f.reason}”`;
      item.title = who;
      const latency = Number.isFinite(f.latency_ms)
        ? f.latency_ms < 1000
          ? `${f.latency_ms} ms`
          : `${(f.latency_ms / 1000).toFixed(1)} s`
        : "";
      item.append(
        el("time", "", clock(f.at)),
        el("span", "who mono", who),
        el("time", "", latency),
        el("span", `badge outcome outcome-${label}`, label.replace("_", " ")),
      );
      return item;
    }),
  );
  const c = city.driverOffers;
  const line = $("driver-offers");
  if (c && c.accepted + c.declined + c.timeout + c.no_recipient > 0) {
    line.replaceChildren(
      "Driver offers, recently: ",
      el("b", "", String(c.accepted)),
      " accepted · ",
      el("b", "", String(c.declined)),
      " declined · ",
      el("b", "", String(c.timeout)),
      " timed out · ",
      el("b", "", String(c.no_recipient)),
      " found no driver",
    );
  } else {
    line.textContent = "No driver offer decided yet.";
  }
}

// ---------------------------------------------------------------- map

const canvas = $("map");
const ctx = canvas.getContext("2d");
const view = { ready: false, lat: 0, lng: 0, span: 0.02, width: 0, height: 0, scale: 1, kx: 1 };

const COLORS = {
  background: "#0b1220",
  grid: "rgba(148, 163, 184, 0.07)",
  idle: "#2dd4bf",
  busy: "#f59e0b",
  store: "#a78bfa",
  storeOffline: "#475569",
  drop: "#f472b6",
  route: "rgba(148, 163, 184, 0.18)",
  label: "rgba(203, 213, 225, 0.75)",
};

function project(lat, lng) {
  return [
    view.width / 2 + (lng - view.lng) * view.kx * view.scale,
    view.height / 2 - (lat - view.lat) * view.scale,
  ];
}

function mapPoints(now) {
  const points = [];
  for (const d of city.drivers.values()) points.push(position(d, now), d.to);
  for (const s of city.stores.values()) points.push(s);
  for (const o of city.orders.values()) {
    if (o.endedAt !== null) continue;
    if (o.pickup) points.push(o.pickup);
    if (o.drop) points.push(o.drop);
  }
  return points.filter(validPoint);
}

// Fits the view to every point with a margin, easing towards it so that a
// new driver at the edge of town widens the view rather than jolting it.
function fitView(points) {
  const rect = canvas.getBoundingClientRect();
  view.width = rect.width;
  view.height = rect.height;
  if (!points.length) return false;
  let [minLat, maxLat, minLng, maxLng] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const p of points) {
    minLat = Math.min(minLat, p.lat);
    maxLat = Math.max(maxLat, p.lat);
    minLng = Math.min(minLng, p.lng);
    maxLng = Math.max(maxLng, p.lng);
  }
  const lat = (minLat + maxLat) / 2;
  const lng = (minLng + maxLng) / 2;
  const kx = Math.cos((lat * Math.PI) / 180);
  // Degrees of latitude the view must show, whichever side is tighter.
  const aspect = Math.max(view.width, 1) / Math.max(view.height, 1);
  const span = Math.max((maxLat - minLat) * 1.25, ((maxLng - minLng) * kx * 1.25) / aspect, 0.012);
  if (!view.ready) {
    Object.assign(view, { ready: true, lat, lng, span });
  } else {
    const k = 0.08;
    view.lat += (lat - view.lat) * k;
    view.lng += (lng - view.lng) * k;
    view.span *= Math.exp(Math.log(span / view.span) * k);
  }
  view.kx = Math.cos((view.lat * Math.PI) / 180);
  view.scale = view.height / view.span;
  return true;
}

function resizeCanvas() {
  const rect = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(rect.width * dpr);
  const h = Math.round(rect.height * dpr);
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
}

const GRID_STEPS_M = [50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];

function drawGrid() {
  const metresPerPx = 111320 / view.scale;
  const step = GRID_STEPS_M.find((m) => m / metresPerPx >= 110) || GRID_STEPS_M.at(-1);
  const stepLat = step / 111320;
  const stepLng = step / (111320 * view.kx);
  ctx.strokeStyle = COLORS.grid;
  ctx.lineWidth = 1;
  ctx.beginPath();
  const halfLat = view.height / 2 / view.scale;
  const halfLng = view.width / 2 / (view.scale * view.kx);
  for (let lat = Math.floor((view.lat - halfLat) / stepLat) * stepLat; lat <= view.lat + halfLat; lat += stepLat) {
    const [, y] = project(lat, view.lng);
    ctx.moveTo(0, Math.round(y) + 0.5);
    ctx.lineTo(view.width, Math.round(y) + 0.5);
  }
  for (let lng = Math.floor((view.lng - halfLng) / stepLng) * stepLng; lng <= view.lng + halfLng; lng += stepLng) {
    const [x] = project(view.lat, lng);
    ctx.moveTo(Math.round(x) + 0.5, 0);
    ctx.lineTo(Math.round(x) + 0.5, view.height);
  }
  ctx.stroke();
  $("scale-bar").style.width = `${Math.round(step / metresPerPx)}px`;
  $("scale-text").textContent = step >= 1000 ? `${step / 1000} km` : `${step} m`;
}

function label(text, x, y, color) {
  ctx.fillStyle = color || COLORS.label;
  ctx.fillText(text, x, y);
}

function drawOrders(now) {
  const active = [...city.orders.values()].filter((o) => o.endedAt === null);
  // The way each order goes: store to customer, faint.
  ctx.setLineDash([]);
  ctx.lineWidth = 1;
  ctx.strokeStyle = COLORS.route;
  for (const o of active) {
    if (!o.pickup || !o.drop) continue;
    const [x1, y1] = project(o.pickup.lat, o.pickup.lng);
    const [x2, y2] = project(o.drop.lat, o.drop.lng);
    ctx.beginPath();
    ctx.moveTo(x1, y1);
    ctx.lineTo(x2, y2);
    ctx.stroke();
  }
  // Where each busy driver is heading, dashed in the order's colour.
  ctx.setLineDash([4, 5]);
  ctx.lineWidth = 1.25;
  for (const o of active) {
    const d = o.driverId && city.drivers.get(o.driverId);
    const target = TOWARDS_DROP.test(o.status) ? o.drop : o.pickup;
    if (!d || !target) continue;
    const p = position(d, now);
    const [x1, y1] = project(p.lat, p.lng);
    const [x2, y2] = project(target.lat, target.lng);
    ctx.strokeStyle = statusColor(o.status);
    ctx.globalAlpha = 0.45;
    ctx.beginPath();
    ctx.moveTo(x1, y1);
    ctx.lineTo(x2, y2);
    ctx.stroke();
    ctx.globalAlpha = 1;
  }
  ctx.setLineDash([]);
  // Drops: a diamond per customer waiting.
  const labels = active.length <= 14;
  for (const o of active) {
    if (!o.drop) continue;
    const [x, y] = project(o.drop.lat, o.drop.lng);
    ctx.save();
    ctx.translate(x, y);
    ctx.rotate(Math.PI / 4);
    ctx.lineWidth = 2;
    ctx.strokeStyle = COLORS.drop;
    ctx.fillStyle = "#0b1220";
    ctx.fillRect(-5, -5, 10, 10);
    ctx.strokeRect(-5, -5, 10, 10);
    ctx.restore();
    ctx.fillStyle = statusColor(o.status);
    ctx.beginPath();
    ctx.arc(x, y, 2.2, 0, Math.PI * 2);
    ctx.fill();
    if (labels) label(o.id, x + 10, y + 4);
  }
}

function drawStores() {
  const labels = city.stores.size <= 30;
  for (const s of city.stores.values()) {
    const [x, y] = project(s.lat, s.lng);
    // Presence: an offline store (no merchant device connected) is a grey
    // outline, so that orders sent there stand out.
    const online = s.online === true;
    ctx.fillStyle = online ? COLORS.store : COLORS.background;
    ctx.strokeStyle = online ? COLORS.background : COLORS.storeOffline;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.roundRect(x - 6, y - 6, 12, 12, 2.5);
    ctx.fill();
    ctx.stroke();
    // Below the square, where a driver's label (above right) rarely is.
    if (labels) {
      ctx.textAlign = "center";
      const text = online ? s.name || s.store_id : `${s.name || s.store_id} (offline)`;
      label(text, x, y + 19, online ? "rgba(196, 181, 253, 0.9)" : "rgba(148, 163, 184, 0.8)");
      ctx.textAlign = "left";
    }
  }
}

function drawDrivers(now) {
  const labels = city.drivers.size <= 20;
  // Idle first, so busy drivers are drawn on top.
  const drivers = [...city.drivers.values()].sort((a, b) => a.busy - b.busy);
  for (const d of drivers) {
    const p = position(d, now);
    const [x, y] = project(p.lat, p.lng);
    const color = d.busy ? COLORS.busy : COLORS.idle;
    if (d.busy && d.trail.length) {
      // The way it came, fading out behind it.
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      const points = [...d.trail, p];
      for (let i = 1; i < points.length; i++) {
        ctx.globalAlpha = (0.35 * i) / points.length;
        ctx.beginPath();
        ctx.moveTo(...project(points[i - 1].lat, points[i - 1].lng));
        ctx.lineTo(...project(points[i].lat, points[i].lng));
        ctx.stroke();
      }
      ctx.globalAlpha = 1;
    }
    if (d.busy) {
      ctx.fillStyle = "rgba(245, 158, 11, 0.22)";
      ctx.beginPath();
      ctx.arc(x, y, 11, 0, Math.PI * 2);
      ctx.fill();
    }
    // Where a busy driver is pointing (idle ones mostly stand still).
    if (d.busy && d.heading !== null) {
      const a = (d.heading * Math.PI) / 180;
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.moveTo(x + Math.sin(a) * 11, y - Math.cos(a) * 11);
      ctx.lineTo(x + Math.sin(a + 2.5) * 5, y - Math.cos(a + 2.5) * 5);
      ctx.lineTo(x + Math.sin(a - 2.5) * 5, y - Math.cos(a - 2.5) * 5);
      ctx.closePath();
      ctx.fill();
    }
    ctx.fillStyle = color;
    ctx.strokeStyle = "#0b1220";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(x, y, d.busy ? 6 : 5, 0, Math.PI * 2);
    ctx.fill();
    ctx.stroke();
    if (labels) label(d.id, x + 9, y - 8, d.busy ? "rgba(253, 230, 138, 0.85)" : "rgba(153, 246, 228, 0.7)");
  }
}

function drawPulses(now) {
  city.pulses = city.pulses.filter((p) => now - p.t0 < 1600);
  for (const p of city.pulses) {
    const t = (now - p.t0) / 1600;
    const [x, y] = project(p.lat, p.lng);
    ctx.strokeStyle = p.color;
    ctx.globalAlpha = 1 - t;
    ctx.lineWidth = 2.5;
    ctx.beginPath();
    ctx.arc(x, y, 8 + t * 34, 0, Math.PI * 2);
    ctx.stroke();
    ctx.globalAlpha = 1;
  }
}

function frame() {
  const now = performance.now();
  resizeCanvas();
  ctx.fillStyle = COLORS.background;
  ctx.fillRect(0, 0, view.width || canvas.width, view.height || canvas.height);
  const visible = fitView(mapPoints(now));
  $("empty").hidden = visible;
  $("scale").hidden = !visible;
  if (visible) {
    ctx.font = "11px system-ui, sans-serif";
    drawGrid();
    drawOrders(now);
    drawStores();
    drawDrivers(now);
    drawPulses(now);
  }
  // Panels at most 5 times a second however busy the city, and once a
  // second anyway (flashes fade, ended orders leave).
  const sincePanels = Date.now() - panelsAt;
  if ((panelsDirty && sincePanels > 200) || sincePanels > 1000) {
    panelsDirty = false;
    panelsAt = Date.now();
    renderPanels();
  }
  requestAnimationFrame(frame);
}

// ---------------------------------------------------------------- start

showConnection();
$("chat-form").addEventListener("submit", sendChat);
requestAnimationFrame(frame);
poll();
setInterval(pumpSubscriptions, SUBSCRIBE_EVERY_MS);
if (window.io) {
  connect();
} else {
  conn.state = "disconnected";
  $("conn-text").textContent = "Socket.IO client failed to load";
}
