// The interop suite's harness: settings from the environment, HS256 tokens,
// the relay's HTTP API, official-client connections that record every event,
// and a runner that reports each case by name.
//
// Environment (the Python suite reads the same):
//   RELAY_URLS          comma-separated base URLs clients connect to; clients
//                       are spread over them (required)
//   RELAY_API_URL       base URL of the publish API (default: the first URL)
//   RELAY_JWT_SECRET    HS256 secret of the nodes (required)
//   RELAY_API_KEY       RELAY_API_KEY of the nodes (required)
//   RELAY_LIMITED_URL   a node with RELAY_MAX_CONNECTIONS_PER_USER =
//   RELAY_LIMITED_MAX   RELAY_LIMITED_MAX (default: the first URL, 20)
//   RELAY_INTEROP_ONLY  a regular expression: run only the matching cases
//   RELAY_INTEROP_CASE_TIMEOUT_MS  per case (default 15000)

import { createHmac, randomBytes } from "node:crypto";
import { io } from "socket.io-client";

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`interop: set ${name} (see the top of interop/js/lib.mjs)`);
    process.exit(2);
  }
  return value;
}

export const config = (() => {
  const urls = required("RELAY_URLS")
    .split(",")
    .map((u) => u.trim().replace(/\/+$/, ""))
    .filter(Boolean);
  return {
    urls,
    apiUrl: (process.env.RELAY_API_URL || urls[0]).replace(/\/+$/, ""),
    secret: required("RELAY_JWT_SECRET"),
    apiKey: required("RELAY_API_KEY"),
    limitedUrl: (process.env.RELAY_LIMITED_URL || urls[0]).replace(/\/+$/, ""),
    limitedMax: Number(process.env.RELAY_LIMITED_MAX || 20),
    only: process.env.RELAY_INTEROP_ONLY ? new RegExp(process.env.RELAY_INTEROP_ONLY) : null,
    caseTimeoutMs: Number(process.env.RELAY_INTEROP_CASE_TIMEOUT_MS || 15000),
  };
})();

/** The client URL number `i` (clients of one case on different nodes). */
export function url(i = 0) {
  return config.urls[i % config.urls.length];
}

// Ids of this run: every order, user and store is new, so runs never meet.
const RUN = `js${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
let counter = 0;
export function uid(kind) {
  counter += 1;
  return `${kind}-${RUN}-${counter}`;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- tokens

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** Signs `claims` (HS256 with the nodes' secret unless `secret` is given). */
export function sign(claims, { secret = config.secret, alg = "HS256" } = {}) {
  const header = b64url(JSON.stringify({ alg, typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  if (alg === "none") return `${header}.${body}.`;
  const sig = createHmac("sha256", secret).update(`${header}.${body}`).digest();
  return `${header}.${body}.${b64url(sig)}`;
}

/** A valid token for `sub` with `role`, for ten minutes; `extra` claims on top. */
export function token(sub, role, extra = {}) {
  return sign({ sub, role, exp: Math.floor(Date.now() / 1000) + 600, ...extra });
}

// ---------------------------------------------------------------- HTTP

async function http(method, path, { bearer, body, base = config.apiUrl } = {}) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: {
      ...(bearer ? { authorization: `Bearer ${bearer}` } : {}),
      ...(body ? { "content-type": "application/json" } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text };
}

/** POST /api/events (at `base`): the backend's way in. Returns the event id. */
export async function publish(type, data, base = config.apiUrl) {
  const res = await http("POST", "/api/events", { bearer: config.apiKey, body: { type, data }, base });
  if (res.status !== 202 || typeof res.json?.event_id !== "string") {
    throw new Error(`POST /api/events ${type}: ${res.status} ${res.text}`);
  }
  return res.json.event_id;
}

/** Waits for the outcome of the offer `eventId` to `target` (GET /api/outcomes). */
export async function outcome(eventId, target, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await http("GET", "/api/outcomes?limit=1000", { bearer: config.apiKey });
    if (res.status !== 200) throw new Error(`GET /api/outcomes: ${res.status} ${res.text}`);
    const found = res.json.outcomes.find((o) => o.event_id === eventId && o.target === target);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`no outcome for ${eventId} to ${target} within ${timeoutMs} ms`);
    await sleep(100);
  }
}

/** GET /orders/active through `base` (a client URL) with a client token. */
export function activeOrders(jwt, base = url(0)) {
  return http("GET", "/orders/active", { bearer: jwt, base });
}

// ---------------------------------------------------------------- clients

/**
 * Every event a socket receives, in order, with the ack callback (when the
 * server asked for one) as `ack`. `next` takes the first event of a name not
 * taken yet, waiting for it.
 */
export class Recorder {
  constructor(socket) {
    this.events = [];
    this.waiters = [];
    socket.onAny((name, ...args) => {
      const ack = typeof args[args.length - 1] === "function" ? args.pop() : undefined;
      this.events.push({ name, data: args[0], args, ack, taken: false });
      for (const w of [...this.waiters]) w();
    });
  }

  #find(name, where) {
    return this.events.find((e) => !e.taken && e.name === name && (!where || where(e.data)));
  }

  async next(name, { timeoutMs = 8000, where } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const e = this.#find(name, where);
      if (e) {
        e.taken = true;
        return e;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        const got = this.events.map((x) => `${x.name} ${JSON.stringify(x.data)}`).join("; ");
        throw new Error(`no ${name} within ${timeoutMs} ms (received: ${got || "nothing"})`);
      }
      await new Promise((resolve) => {
        const w = () => {
          clearTimeout(t);
          this.waiters = this.waiters.filter((x) => x !== w);
          resolve();
        };
        const t = setTimeout(w, left);
        this.waiters.push(w);
      });
    }
  }

  /** Fails if an event `name` (not taken yet, matching `where`) arrives within `ms`. */
  async none(name, { ms = 400, where } = {}) {
    await sleep(ms);
    const e = this.#find(name, where);
    if (e) throw new Error(`unexpected ${name} ${JSON.stringify(e.data)}`);
  }

  names() {
    return this.events.map((e) => e.name);
  }
}

/**
 * Options of the official client for one connection.
 *   via:        "auth" (default) or "query": where the token travels
 *   transports: ["websocket"], ["polling"] or undefined (polling, then upgrade)
 *   auth:       extra auth fields, or a function returning the whole auth
 */
export function clientOptions({ jwt, via = "auth", transports, auth, reconnection = false } = {}) {
  const opts = {
    forceNew: true, // a Manager (an Engine.IO connection) of its own
    reconnection,
    reconnectionDelay: 200,
    reconnectionDelayMax: 1000,
    timeout: 8000,
  };
  if (transports) opts.transports = transports;
  if (typeof auth === "function") {
    opts.auth = auth;
  } else if (via === "auth") {
    opts.auth = jwt === undefined ? { ...auth } : { token: jwt, ...auth };
  } else {
    if (jwt !== undefined) opts.query = { token: jwt };
    if (auth) opts.auth = auth;
  }
  return opts;
}

/** A connection made by a case: closed when the case ends. */
export class Conn {
  constructor(socket) {
    this.socket = socket;
    this.rec = new Recorder(socket);
    this.upgradedTo = null;
    this.openedWith = null;
    socket.io.on("open", () => {
      this.openedWith ??= socket.io.engine.transport.name;
      socket.io.engine.on("upgrade", (t) => {
        this.upgradedTo = t.name;
      });
    });
  }

  get transport() {
    return this.socket.io.engine?.transport?.name;
  }

  /** Emits with an ack and returns the ack's first argument. */
  async request(event, data, timeoutMs = 5000) {
    return this.socket.timeout(timeoutMs).emitWithAck(event, data);
  }

  close() {
    this.socket.disconnect();
  }
}

/** Resolves once connected, or rejects with the connect_error message. */
export function waitConnected(socket, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    if (socket.connected) return resolve();
    const t = setTimeout(() => done(new Error(`not connected within ${timeoutMs} ms`)), timeoutMs);
    const onConnect = () => done();
    const onError = (err) => done(Object.assign(new Error(err.message), { connectError: err }));
    function done(err) {
      clearTimeout(t);
      socket.off("connect", onConnect);
      socket.off("connect_error", onError);
      err ? reject(err) : resolve();
    }
    socket.on("connect", onConnect);
    socket.on("connect_error", onError);
  });
}

// ---------------------------------------------------------------- checks

export function assert(cond, message) {
  if (!cond) throw new Error(message);
}

export function eq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

/** Deep equality that ignores key order. */
export function same(actual, expected, what) {
  const norm = (v) =>
    v && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, norm(v[k])]))
      : Array.isArray(v)
        ? v.map(norm)
        : v;
  eq(norm(actual), norm(expected), what);
}

/** `payload` has every key of `shape` with a value of that type (or that value). */
export function shape(payload, spec, what) {
  assert(payload && typeof payload === "object" && !Array.isArray(payload), `${what}: not an object: ${JSON.stringify(payload)}`);
  for (const [key, want] of Object.entries(spec)) {
    const v = payload[key];
    const ok =
      typeof want === "function"
        ? want(v)
        : typeof want === "string" && want.startsWith(":")
          ? want === ":array"
            ? Array.isArray(v)
            : want === ":object"
              ? v !== null && typeof v === "object" && !Array.isArray(v)
              : typeof v === want.slice(1)
          : JSON.stringify(v) === JSON.stringify(want);
    assert(ok, `${what}: field ${key} is ${JSON.stringify(v)}, want ${typeof want === "function" ? want.name || "a valid value" : JSON.stringify(want)} (payload ${JSON.stringify(payload)})`);
  }
}

export const isStreamId = (v) => typeof v === "string" && /^\d+-\d+$/.test(v);
export const isRfc3339 = (v) =>
  typeof v === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(v) && !Number.isNaN(Date.parse(v));
export const isRecentMs = (v) => Number.isInteger(v) && Math.abs(v - Date.now()) < 60000;
export const isPositiveInt = (v) => Number.isInteger(v) && v >= 1;

// ---------------------------------------------------------------- runner

const cases = [];

/** Registers a case: `fn(ctx)` with `ctx.connect(...)`; throws to fail. */
export function test(name, fn) {
  cases.push({ name, fn });
}

class Context {
  constructor() {
    this.conns = [];
  }

  /** An official-client socket (see clientOptions); not yet connected. */
  open(base, options) {
    const socket = io(base, clientOptions(options));
    const conn = new Conn(socket);
    this.conns.push(conn);
    return conn;
  }

  /** Connected, or throws with the connect_error message. */
  async connect(base, options) {
    const conn = this.open(base, options);
    try {
      await waitConnected(conn.socket);
    } catch (err) {
      const kind = err.connectError ? `connect_error "${err.message}"` : err.message;
      throw Object.assign(new Error(`connect to ${base} failed: ${kind}`), { connectError: err.connectError });
    }
    return conn;
  }

  /** The connect_error message the server refuses this connection with. */
  async refused(base, options) {
    const conn = this.open(base, options);
    try {
      await waitConnected(conn.socket);
    } catch (err) {
      if (!err.connectError) throw new Error(`no connect_error, but: ${err.message}`);
      return err.message;
    }
    throw new Error("connected, but a connect_error was expected");
  }

  closeAll() {
    for (const c of this.conns) c.close();
  }
}

/** The message, what the client knew of a transport error, and the suite's line. */
function describe(err) {
  if (!(err instanceof Error)) return String(err);
  const cause = err.connectError ?? err;
  const extra = [cause.description, cause.context?.statusText]
    .filter((x) => x !== undefined && x !== null && typeof x !== "object")
    .join(" ");
  const at = (err.stack || "").split("\n").find((l) => l.includes("suite.mjs"));
  return `${err.message}${extra ? ` (${extra})` : ""}${at ? ` [${at.trim().replace(/^at /, "")}]` : ""}`;
}

export async function run(suiteName) {
  const chosen = cases.filter((c) => !config.only || config.only.test(c.name));
  let passed = 0;
  const failed = [];
  const started = Date.now();
  console.log(`${suiteName}: ${chosen.length} cases against ${config.urls.join(", ")} (run ${RUN})`);
  for (const c of chosen) {
    const ctx = new Context();
    const t0 = Date.now();
    let timer;
    try {
      await Promise.race([
        c.fn(ctx),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`case timed out after ${config.caseTimeoutMs} ms`)), config.caseTimeoutMs);
        }),
      ]);
      passed += 1;
      console.log(`ok   ${c.name} (${Date.now() - t0} ms)`);
    } catch (err) {
      failed.push(c.name);
      console.log(`FAIL ${c.name} (${Date.now() - t0} ms): ${describe(err)}`);
    } finally {
      clearTimeout(timer);
      ctx.closeAll();
    }
  }
  console.log(`${suiteName}: ${passed} passed, ${failed.length} failed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  if (failed.length) console.log(`failed: ${failed.join(", ")}`);
  // Sockets closed by closeAll may hold timers for a moment: exit explicitly.
  process.exit(failed.length || chosen.length === 0 ? 1 : 0);
}
