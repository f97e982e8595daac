// @ts-check
/**
 * wshub.js: the browser client of wshub's wire protocol v1 (docs/protocol.md).
 *
 * One ES module, no dependencies, no build step. Served by every app that mounts
 * the protocol endpoint, at `/wshub/client.js`:
 *
 *     import { Client } from "/wshub/client.js";
 *     const client = new Client("/ws", { getToken: async () => (await fetch("/token")).text() });
 *     client.on("state", (state, info) => console.log(state, info));
 *     const sub = client.subscribe("chat:lobby", { onMessage: (m) => console.log(m.data) });
 *     client.connect();
 *     const offset = await client.publish("chat:lobby", { text: "hi" });
 *
 * What it does for you:
 * - sends `{"op":"connect","token":...}` as the first frame of every connection and
 *   waits for `welcome` (`token` option, or an async `getToken` asked on every connect);
 * - reconnects with exponential backoff and full jitter, except after 4001/4003:
 *   then only once `getToken` hands out a different token (a static token stops);
 * - answers `ping` with `pong`, and drops a connection that stays silent for longer
 *   than the announced ping interval plus `pingGrace`;
 * - backs off longer after each 4008 (slow consumer) close in a row (`healthyAfter`);
 * - resubscribes after a reconnect with `since`/`epoch` per channel, delivers the
 *   recovered messages before live ones, drops duplicates by offset, and tells the
 *   application when recovery failed (`onRecover`, event "recovery");
 * - splits `\n`-packed messages; matches replies to requests by id, with timeouts;
 *   rejects requests in flight when the connection drops.
 * - calls server methods (`rpc()`), and takes the channels the server subscribed it
 *   to (the welcome's `subscribed`) as subscriptions, recovered after a reconnect.
 *
 * The pure helpers (`backoffDelay`, `splitFrames`, `ChannelPositions`, `tokenExpiry`,
 * `reconnectPolicy`) are exported for tests and for other clients.
 */

export const PROTOCOL = "wshub.v1.json";

/** @typedef {"connecting" | "connected" | "disconnected"} State */

/**
 * @typedef {object} ClientOptions
 * @property {string} [token] credentials sent in the first frame.
 * @property {(info: {rejected: boolean}) => (string | null | undefined | Promise<string | null | undefined>)} [getToken]
 *   asked for a token before every connection and refresh; `rejected` is true after a 4001/4003.
 * @property {number} [backoffBase] first reconnect delay ceiling, in ms (500).
 * @property {number} [backoffCap] largest reconnect delay ceiling, in ms (20000).
 * @property {number} [healthyAfter] ms a connection must stay up for a 4008 close not to
 *   count as one more in a row (10000); 4008 closes in a row back off longer each time.
 * @property {number} [requestTimeout] ms before a request without reply is rejected (10000).
 * @property {number} [connectTimeout] ms to open the socket and get `welcome` (10000).
 * @property {number} [pingGrace] ms of silence tolerated past the announced ping interval (10000).
 * @property {number} [refreshMargin] refresh a JWT this many ms before it expires (30000).
 * @property {string} [subprotocol] the WebSocket subprotocol ("wshub.v1.json").
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (tests pass a fake one).
 * @property {() => number} [random] a source of numbers in [0, 1) for the jitter (Math.random).
 */

/**
 * @typedef {object} Message
 * @property {string} channel
 * @property {any} data
 * @property {number} [offset] position in the channel's history, when it keeps one.
 * @property {string} [from] the publishing client's id, when a client published it.
 * @property {boolean} recovered true for messages recovered after a reconnect.
 */

/**
 * @typedef {object} PresenceEvent
 * @property {"join" | "leave"} op
 * @property {string} channel
 * @property {string} client the connection's id.
 * @property {string | null} user
 */

/**
 * @typedef {object} Recovery
 * @property {string} channel
 * @property {boolean} recovered false: messages were lost; reload the channel's state.
 * @property {number} count messages recovered.
 * @property {number} [offset] the channel's position after the resubscribe.
 * @property {string} [epoch]
 */

/**
 * @typedef {object} SubscriptionHandlers
 * @property {(message: Message) => void} [onMessage]
 * @property {(event: PresenceEvent) => void} [onJoin]
 * @property {(event: PresenceEvent) => void} [onLeave]
 * @property {(recovery: Recovery) => void} [onRecover] after every resubscribe that asked for recovery.
 * @property {(result: object) => void} [onSubscribed] after every successful (re)subscribe.
 * @property {(error: WshubError) => void} [onError] the server refused the subscribe.
 * @property {number} [since] recover from this offset on the first subscribe (0: all kept).
 * @property {string} [epoch] the epoch `since` belongs to.
 */

/**
 * @typedef {object} StateInfo
 * @property {number} [code] close code of the connection that ended.
 * @property {string} [reason] its close reason.
 * @property {boolean} [reconnect] whether the client will reconnect by itself.
 * @property {number} [delay] ms until the next attempt.
 * @property {number} [attempt] reconnect attempts since the last welcome.
 */

/**
 * @typedef {object} HistoryPage
 * @property {number} offset
 * @property {string} epoch
 * @property {Message[]} messages
 */

/** An error from the server (`code` from the protocol) or from the client
 * (`timeout`, `disconnected`, `closed`, `unauthorized`, `forbidden`, `bad_frame`). */
export class WshubError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {number} [closeCode]
   */
  constructor(code, message, closeCode) {
    super(`${code}: ${message}`);
    this.name = "WshubError";
    this.code = code;
    this.closeCode = closeCode;
  }
}

// -- pure helpers ------------------------------------------------------------------

/**
 * Exponential backoff with full jitter: a random delay in [0, min(cap, base * 2^attempt)).
 * @param {number} attempt 0 for the first retry.
 * @param {number} base ms
 * @param {number} cap ms
 * @param {() => number} [random]
 * @returns {number} ms
 */
export function backoffDelay(attempt, base, cap, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 31));
  return Math.floor(random() * ceiling);
}

/**
 * The wait after the `streak`-th 4008 (slow consumer) close in a row: equal jitter,
 * uniform in [c/2, c) with c = min(cap, base * 2^(streak - 1)), so never near 0.
 * @param {number} streak 1 for the first 4008 close.
 * @param {number} base ms
 * @param {number} cap ms
 * @param {() => number} [random]
 * @returns {number} ms
 */
export function slowConsumerDelay(streak, base, cap, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(Math.max(streak - 1, 0), 31));
  return Math.floor(ceiling / 2 + random() * (ceiling / 2));
}

/**
 * What to do after a close code: "stop" (4002: the server speaks none of the offered
 * subprotocols; retrying cannot help), "reauth" (4001/4003: only with a different token),
 * "later" (1013/4029: the server asked for less; wait at least the base delay),
 * or "retry".
 * @param {number} code
 * @returns {"stop" | "reauth" | "later" | "retry"}
 */
export function reconnectPolicy(code) {
  if (code === 4002) return "stop";
  if (code === 4001 || code === 4003) return "reauth";
  if (code === 1013 || code === 4029) return "later";
  return "retry";
}

/**
 * Split a WebSocket text message into the frames packed in it, one JSON object a line.
 * @param {string} text
 * @param {(error: Error, line: string) => void} [onError] called for a line that is not JSON.
 * @returns {any[]}
 */
export function splitFrames(text, onError) {
  const frames = [];
  for (const line of text.split("\n")) {
    if (!line) continue;
    try {
      frames.push(JSON.parse(line));
    } catch (error) {
      if (onError) onError(/** @type {Error} */ (error), line);
    }
  }
  return frames;
}

/**
 * The `exp` of a JWT in ms since the epoch, or undefined (not a JWT, or no `exp`).
 * Read without verifying: only to know when to refresh.
 * @param {string | null | undefined} token
 * @returns {number | undefined}
 */
export function tokenExpiry(token) {
  const part = typeof token === "string" ? token.split(".")[1] : undefined;
  if (!part) return undefined;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(base64.padEnd(base64.length + ((4 - (base64.length % 4)) % 4), "="))).exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** Publish errors `publish(..., {retry: true})` retries. */
const RETRIED = new Set(["timeout", "unavailable", "disconnected"]);

/** A random idempotency key (32 hex digits). */
function randomKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID().replace(/-/g, "");
  let key = "";
  for (let i = 0; i < 32; i++) key += Math.floor(Math.random() * 16).toString(16);
  return key;
}

/**
 * Where the client stands in each subscribed channel's history: the last offset
 * delivered and its epoch. Decides which messages are new (dedupe by offset) and what
 * a resubscribe asks for (`since`/`epoch`).
 */
export class ChannelPositions {
  constructor() {
    /** @type {Map<string, {offset: number | undefined, epoch: string}>} */
    this.map = new Map();
  }

  /** @param {string} channel */
  get(channel) {
    return this.map.get(channel);
  }

  /** @param {string} channel */
  delete(channel) {
    this.map.delete(channel);
  }

  /**
   * The `since`/`epoch` fields of a resubscribe: empty before any position is known.
   * @param {string} channel
   * @returns {{since?: number, epoch?: string}}
   */
  resubscribeFields(channel) {
    const p = this.map.get(channel);
    if (!p || p.offset === undefined) return {};
    return p.epoch ? { since: p.offset, epoch: p.epoch } : { since: p.offset };
  }

  /**
   * Whether a message at `offset` is new; if so it becomes the position.
   * Messages without an offset (channels without history) are always new.
   * @param {string} channel
   * @param {number | undefined} offset
   */
  accept(channel, offset) {
    if (typeof offset !== "number") return true;
    const p = this.map.get(channel);
    if (!p) {
      this.map.set(channel, { offset, epoch: "" });
      return true;
    }
    if (p.offset !== undefined && offset <= p.offset) return false;
    p.offset = offset;
    return true;
  }

  /**
   * True when messages were delivered but the epoch is unknown. Servers that create the
   * epoch on the first subscribe (every current one) never leave it unknown; kept for
   * applications that track positions themselves.
   * @param {string} channel
   */
  needsEpoch(channel) {
    const p = this.map.get(channel);
    return !!p && !p.epoch && (p.offset ?? 0) > 0;
  }

  /**
   * Learn the epoch from a history or subscribe position read after the messages.
   * @param {string} channel
   * @param {{offset?: number, epoch?: string}} position
   */
  learnEpoch(channel, position) {
    const p = this.map.get(channel);
    if (p && !p.epoch && position.epoch && (position.offset ?? 0) >= (p.offset ?? 0)) {
      p.epoch = position.epoch;
    }
  }

  /**
   * Apply a subscribe reply. Returns the recovered messages still to deliver (new ones
   * only, in order) and, when recovery was asked for, whether it succeeded.
   * @param {string} channel
   * @param {{offset?: number, epoch?: string, recovered?: boolean, messages?: any[]}} result
   * @param {boolean} asked whether the subscribe carried `since`.
   * @returns {{messages: any[], recovered: boolean | undefined}}
   */
  applySubscribe(channel, result, asked) {
    if (typeof result.offset !== "number") {
      this.map.delete(channel); // the channel keeps no history: nothing to track
      return { messages: [], recovered: asked ? !!result.recovered : undefined };
    }
    const epoch = result.epoch ?? "";
    if (asked && result.recovered) {
      const fresh = (result.messages ?? []).filter((m) => this.accept(channel, m.offset));
      const p = this.map.get(channel) ?? { offset: 0, epoch };
      // With `more`, the rest up to `offset` is still to be read with `history`.
      p.offset = Math.max(p.offset ?? 0, result.more ? (p.offset ?? 0) : result.offset);
      p.epoch = epoch;
      this.map.set(channel, p);
      return { messages: fresh, recovered: true };
    }
    this.map.set(channel, { offset: result.offset, epoch });
    return { messages: [], recovered: asked ? false : undefined };
  }
}

// -- the client --------------------------------------------------------------------

const DEFAULTS = {
  backoffBase: 500,
  backoffCap: 20000,
  healthyAfter: 10000,
  requestTimeout: 10000,
  connectTimeout: 10000,
  pingGrace: 10000,
  refreshMargin: 30000,
  subprotocol: PROTOCOL,
};
const MAX_TIMER = 2 ** 31 - 1; // setTimeout fires at once past this
const TRANSIENT = new Set(["timeout", "unavailable", "internal", "rate_limited"]);

/**
 * @typedef {object} Pending
 * @property {Record<string, any>} frame
 * @property {(value: any) => void} resolve
 * @property {(error: WshubError) => void} reject
 * @property {ReturnType<typeof setTimeout>} timer
 * @property {boolean} sent
 * @property {(result: any) => void} [onResult] run synchronously with the reply, before
 *   the frames that follow it (recovered messages go out before live ones).
 */

/** One subscription to a channel; `client.subscribe()` returns it. */
export class Subscription {
  /**
   * @param {Client} client
   * @param {string} channel
   * @param {SubscriptionHandlers} handlers
   */
  constructor(client, channel, handlers) {
    this.client = client;
    this.channel = channel;
    this.handlers = handlers;
    /** @type {"subscribing" | "subscribed" | "unsubscribed"} */
    this.state = "subscribing";
    /** @type {(value: any) => void} */
    let resolve = () => {};
    /** @type {(error: WshubError) => void} */
    let reject = () => {};
    /** Resolves with the first subscribe result; rejects when the server refuses. */
    this.ready = new Promise((res, rej) => ((resolve = res), (reject = rej)));
    this.ready.catch(() => {}); // refusals are also reported through onError
    this._resolve = resolve;
    this._reject = reject;
  }

  /** Leave the channel (the last subscription to it unsubscribes on the wire). */
  unsubscribe() {
    this.client._unsubscribe(this);
  }
}

/** A wshub connection that reconnects, resubscribes and recovers by itself. */
export class Client {
  /**
   * @param {string} url the protocol endpoint, e.g. "/ws" (resolved against the page) or "wss://host/ws".
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    this.url = resolveUrl(url);
    this.options = { ...DEFAULTS, ...options };
    /** @type {State} */
    this.state = "disconnected";
    /** @type {Record<string, any> | null} the last welcome frame */
    this.welcome = null;
    this.positions = new ChannelPositions();
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    /** @type {Map<string, Set<Subscription>>} */
    this._channels = new Map();
    /** @type {Map<number, Pending>} */
    this._pending = new Map();
    /** @type {Map<string, any>} the last subscribe result per channel */
    this._results = new Map();
    this._lastSeen = 0;
    /** @type {WebSocket | null} */
    this._ws = null;
    this._generation = 0;
    this._nextId = 1;
    this._attempt = 0;
    /** 4008 closes in a row of connections that did not stay up `healthyAfter` ms. */
    this._slowStreak = 0;
    this._welcomedAt = 0;
    /** @type {Map<string, any[]>} live message frames held while a recovery's pages are read */
    this._held = new Map();
    this._wanted = false;
    /** @type {string | null | undefined} the token of the current connection */
    this._token = undefined;
    /** @type {{token: string | null, code: number, reason: string} | null} */
    this._rejected = null;
    /** @type {Record<string, ReturnType<typeof setTimeout> | undefined>} */
    this._timers = {};
    this._onOnline = () => this._reconnectNow();
  }

  /**
   * Listen to an event: "state" (state, info), "welcome" (frame), "message" (message),
   * "join"/"leave" (event), "recovery" (recovery), "recoveryFailed" (recovery: messages
   * were lost, reload the channel's state), "error" (error).
   * @param {string} event
   * @param {Function} fn
   * @returns {() => void} a function that removes the listener.
   */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  /** Start connecting (and keep reconnecting until `close()`). Idempotent. */
  connect() {
    if (this._wanted && (this._ws || this._timers.reconnect || this.state === "connecting")) return;
    this._wanted = true;
    this._attempt = 0;
    globalThis.addEventListener?.("online", this._onOnline);
    void this._open();
  }

  /** Close the connection and stop reconnecting. Subscriptions stay; `connect()` resumes them. */
  close() {
    this._wanted = false;
    globalThis.removeEventListener?.("online", this._onOnline);
    this._generation++;
    for (const name of Object.keys(this._timers)) this._clearTimer(name);
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000, "client closed");
    this._failPending(new WshubError("closed", "the client was closed"), true);
    this._setState("disconnected", { code: 1000, reason: "client closed", reconnect: false });
  }

  /**
   * Replace the static token (after a 4001, say); takes effect on the next connection.
   * @param {string | undefined} token
   */
  setToken(token) {
    this.options.token = token;
  }

  /**
   * Subscribe to a channel. Returns at once; the subscribe is sent when connected.
   * @param {string} channel
   * @param {SubscriptionHandlers} [handlers]
   * @returns {Subscription}
   */
  subscribe(channel, handlers = {}) {
    const sub = new Subscription(this, channel, handlers);
    let subs = this._channels.get(channel);
    if (subs) {
      subs.add(sub);
      if (this._results.has(channel)) this._subscribed(sub, this._results.get(channel));
      return sub;
    }
    this._channels.set(channel, (subs = new Set([sub])));
    if (typeof handlers.since === "number") {
      this.positions.map.set(channel, { offset: handlers.since, epoch: handlers.epoch ?? "" });
    }
    if (this.state === "connected") this._sendSubscribe(channel);
    return sub;
  }

  /**
   * Publish data to a channel. With a typed namespace, `client.publish<ChatMessage>(...)`
   * (TypeScript) or `@type` checks `data` against the type `wshub types --ts` printed.
   * @template [T=any]
   * @param {string} channel
   * @param {T} data
   * @param {{idempotencyKey?: string, retry?: boolean, retryFor?: number}} [options]
   *   `idempotencyKey` (1-64 chars): the server publishes a second publish with the same
   *   key to the same channel nothing (within its idempotency_window), answering the
   *   first's offset; `retry`: retry "timeout"/"unavailable"/"disconnected" for
   *   `retryFor` ms under that key.
   * @returns {Promise<number | undefined>} the offset, when the channel keeps history.
   */
  async publish(channel, data, options = {}) {
    // options: {idempotencyKey?: string, retry?: boolean, retryFor?: number (ms, 60000)}.
    // With retry, a publish whose outcome is unknown or that was not sent ("timeout",
    // "unavailable", "disconnected") is sent again with backoff under the same
    // idempotency key (one is made up when none is given): published exactly once.
    const { retry = false, retryFor = 60000 } = options;
    let key = options.idempotencyKey;
    if (retry && key === undefined) key = randomKey();
    const frame = key === undefined ? { op: "publish", channel, data } : { op: "publish", channel, data, idempotency_key: key };
    const deadline = Date.now() + retryFor;
    for (let attempt = 0; ; attempt++) {
      try {
        return (await this.request(frame)).offset;
      } catch (error) {
        const code = error instanceof WshubError ? error.code : undefined;
        if (!retry || !RETRIED.has(code ?? "") || Date.now() >= deadline) throw error;
      }
      const delay = backoffDelay(attempt, this.options.backoffBase, this.options.backoffCap, this.options.random);
      await new Promise((resolve) => setTimeout(resolve, Math.min(delay, Math.max(0, deadline - Date.now()))));
    }
  }

  /**
   * Who is in a channel.
   * @param {string} channel
   * @returns {Promise<Record<string, {user: string | null, info: any}>>} keyed by client id.
   */
  async presence(channel) {
    return (await this.request({ op: "presence", channel })).clients;
  }

  /**
   * Read a channel's history.
   * @param {string} channel
   * @param {{since?: number, limit?: number}} [options]
   * @returns {Promise<HistoryPage>}
   */
  async history(channel, options = {}) {
    const result = await this.request({ op: "history", channel, ...options });
    this.positions.learnEpoch(channel, result);
    const messages = result.messages.map((/** @type {any} */ m) => toMessage(m, false));
    return { offset: result.offset, epoch: result.epoch, messages };
  }

  /**
   * Call a server method registered with `@hub.rpc`. Never sent twice: a call whose
   * connection drops before the reply rejects with "disconnected" (it may have run).
   * @param {string} method
   * @param {any} [params] any JSON value (undefined: none sent).
   * @param {{timeout?: number}} [options] `timeout`: ms to wait for the reply (`requestTimeout`).
   * @template [T=any] the result's type, e.g. `client.rpc<AddResult>("add", {a: 1, b: 2})`
   *   in TypeScript (types from `wshub types --ts`); in JS, a `@type` annotation on the result.
   * @returns {Promise<T>} the method's result (any JSON). Rejects with a WshubError
   *   whose `code` is the server's (`not_found`, `bad_request`, an RPCError's own code,
   *   `internal`, `rate_limited`) or the client's (`timeout`, `disconnected`, `closed`).
   */
  rpc(method, params, options = {}) {
    const frame = params === undefined ? { op: "rpc", method } : { op: "rpc", method, params };
    return this.request(frame, undefined, options.timeout);
  }

  /**
   * Hand the server a new token before the current one expires.
   * @param {string} [token] by default, asks `getToken`.
   * @returns {Promise<number | null>} the new expiry (Unix seconds), or null.
   */
  async refresh(token) {
    const fresh = token ?? (await this._resolveToken());
    if (!fresh) throw new WshubError("unauthorized", "no token to refresh with");
    const result = await this.request({ op: "refresh", token: fresh });
    this._token = fresh;
    this._scheduleRefresh(typeof result.expires === "number" ? result.expires * 1000 : undefined);
    return result.expires;
  }

  /**
   * Send a request frame (an `id` is added) and wait for its reply's `result`.
   * Waits for the connection while connecting; rejects when the connection drops
   * after the request was sent, or after `requestTimeout`.
   * @param {Record<string, any>} frame
   * @param {(result: any) => void} [onResult]
   * @param {number} [timeout] ms before it is rejected (`requestTimeout`).
   * @returns {Promise<any>}
   */
  request(frame, onResult, timeout) {
    if (!this._wanted) return Promise.reject(new WshubError("closed", "not connected: call connect()"));
    const id = this._nextId++;
    const wait = timeout ?? this.options.requestTimeout;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new WshubError("timeout", `no reply to ${frame.op} within ${wait} ms`));
      }, wait);
      /** @type {Pending} */
      const pending = { frame: { ...frame, id }, resolve, reject, timer, sent: false, onResult };
      this._pending.set(id, pending);
      if (this.state === "connected") this._sendPending(pending);
    });
  }

  // -- connection life ---------------------------------------------------------------

  async _open() {
    const generation = ++this._generation;
    this._setState("connecting", { attempt: this._attempt });
    let token;
    try {
      token = await this._resolveToken();
    } catch (error) {
      if (generation !== this._generation) return;
      this._emit("error", new WshubError("unauthorized", `getToken failed: ${error}`));
      this._scheduleReconnect(1006, "getToken failed", "retry");
      return;
    }
    if (generation !== this._generation || !this._wanted) return;
    const rejected = this._rejected;
    if (rejected && (token ?? null) === rejected.token) {
      this._stop(rejected.code, rejected.reason);
      return;
    }
    this._token = token;
    const WS = this.options.WebSocket ?? globalThis.WebSocket;
    let ws;
    try {
      ws = new WS(this.url, this.options.subprotocol);
    } catch (error) {
      this._emit("error", new WshubError("bad_url", String(error)));
      this._scheduleReconnect(1006, String(error), "retry");
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      if (this._ws === ws) ws.send(JSON.stringify(token ? { op: "connect", token } : { op: "connect" }));
    };
    ws.onmessage = (event) => {
      if (this._ws === ws) this._onData(event.data);
    };
    ws.onclose = (event) => {
      if (this._ws === ws) this._onClose(event.code, event.reason);
    };
    this._setTimer("connect", this.options.connectTimeout, () => {
      this._drop(ws, 1006, `no welcome within ${this.options.connectTimeout} ms`);
    });
  }

  /**
   * Forget a socket that does not answer and carry on as if it had closed.
   * @param {WebSocket} ws @param {number} code @param {string} reason
   */
  _drop(ws, code, reason) {
    if (this._ws !== ws) return;
    this._ws = null;
    try {
      ws.close(4000, reason.slice(0, 120));
    } catch {
      // already closing
    }
    this._onClose(code, reason);
  }

  /** @param {number} code @param {string} reason */
  _onClose(code, reason) {
    this._ws = null;
    this.welcome = null;
    for (const name of ["connect", "watchdog", "refresh"]) this._clearTimer(name);
    this._failPending(new WshubError("disconnected", `connection closed (${code} ${reason})`), false);
    this._held.clear(); // not delivered: recovered again on the next connection
    // Repeated 4008 (say, a reply the queue cannot hold): back off longer each time,
    // until a connection stays up healthyAfter ms or ends another way.
    const healthy = this._welcomedAt > 0 && Date.now() - this._welcomedAt >= this.options.healthyAfter;
    this._slowStreak = code === 4008 && !healthy ? this._slowStreak + 1 : 0;
    this._welcomedAt = 0;
    for (const subs of this._channels.values()) {
      for (const sub of subs) if (sub.state === "subscribed") sub.state = "subscribing";
    }
    if (!this._wanted) {
      this._setState("disconnected", { code, reason, reconnect: false });
      return;
    }
    const policy = reconnectPolicy(code);
    if (policy === "stop") {
      this._stop(code, reason);
      return;
    }
    if (policy === "reauth") {
      this._rejected = { token: this._token ?? null, code, reason };
      if (!this.options.getToken) {
        this._stop(code, reason);
        return;
      }
    }
    this._scheduleReconnect(code, reason, policy);
  }

  /**
   * @param {number} code
   * @param {string} reason
   * @param {"stop" | "reauth" | "later" | "retry"} policy
   */
  _scheduleReconnect(code, reason, policy) {
    const { backoffBase, backoffCap, random } = this.options;
    let delay = backoffDelay(this._attempt, backoffBase, backoffCap, random);
    if (policy === "later") delay = Math.max(delay, backoffBase);
    if (this._slowStreak) {
      this._attempt = Math.max(this._attempt, this._slowStreak);
      delay = slowConsumerDelay(this._slowStreak, backoffBase, backoffCap, random);
    }
    this._attempt++;
    this._setState("disconnected", { code, reason, reconnect: true, delay, attempt: this._attempt });
    this._setTimer("reconnect", delay, () => void this._open());
  }

  _reconnectNow() {
    if (!this._wanted || !this._timers.reconnect) return;
    this._clearTimer("reconnect");
    void this._open();
  }

  /** Give up: a refused token and no other to try. @param {number} code @param {string} reason */
  _stop(code, reason) {
    this._wanted = false;
    this._failPending(new WshubError("closed", `stopped after ${code} ${reason}`), true);
    this._setState("disconnected", { code, reason, reconnect: false });
    const kind = code === 4003 ? "forbidden" : "unauthorized";
    this._emit("error", new WshubError(kind, `${reason || kind}; not reconnecting without a new token`, code));
  }

  async _resolveToken() {
    const { getToken, token } = this.options;
    if (getToken) return (await getToken({ rejected: this._rejected !== null })) ?? null;
    return token ?? null;
  }

  // -- frames in ---------------------------------------------------------------------

  /** @param {any} data */
  _onData(data) {
    if (typeof data !== "string") {
      this._emit("error", new WshubError("bad_frame", "binary frame on a JSON connection"));
      return;
    }
    this._lastSeen = Date.now();
    const frames = splitFrames(data, (error, line) =>
      this._emit("error", new WshubError("bad_frame", `${error.message}: ${line.slice(0, 80)}`)),
    );
    for (const frame of frames) this._onFrame(frame);
  }

  /** @param {any} frame */
  _onFrame(frame) {
    if (frame === null || typeof frame !== "object") return;
    if (frame.id !== undefined && frame.id !== null && ("result" in frame || "error" in frame)) {
      this._onReply(frame);
      return;
    }
    switch (frame.op) {
      case "message":
      case "gap": // ordered with the messages (held with them during a recovery)
        return this._onMessage(frame);
      case "ping":
        return this._send({ op: "pong" });
      case "join":
      case "leave":
        return this._onPresence(frame);
      case "welcome":
        return this._onWelcome(frame);
    }
    if (frame.error) {
      this._emit("error", new WshubError(frame.error.code, frame.error.message));
    }
  }

  /** @param {any} frame */
  _onWelcome(frame) {
    this._clearTimer("connect");
    const adopted = this._adopt(frame.subscribed);
    this.welcome = frame;
    this._attempt = 0;
    this._welcomedAt = Date.now();
    this._rejected = null;
    this._setState("connected", {});
    this._emit("welcome", frame);
    this._armWatchdog();
    this._scheduleRefresh(tokenExpiry(this._token));
    for (const channel of this._channels.keys()) if (!adopted.has(channel)) this._sendSubscribe(channel);
    for (const pending of this._pending.values()) if (!pending.sent) this._sendPending(pending);
  }

  /**
   * Take the server-side subscriptions a welcome lists (the server's on_connect hooks).
   * A channel not known yet is registered without subscriptions, at the position the
   * welcome gives: its messages go to "message" listeners, a `subscribe()` to it is
   * answered at once, and after a reconnect it is resubscribed with `since` like any
   * other. A known channel is resubscribed as usual (with `since`: a recovery on the
   * server's membership). A channel only the server had subscribed (no Subscription)
   * that the welcome no longer lists is forgotten.
   * @param {any} subscribed the welcome's `subscribed`: [{channel, offset?, epoch?}]
   * @returns {Set<string>} the channels registered now (nothing to send for them).
   */
  _adopt(subscribed) {
    /** @type {Map<string, any>} */
    const listed = new Map();
    for (const item of Array.isArray(subscribed) ? subscribed : []) {
      if (item && typeof item.channel === "string") listed.set(item.channel, item);
    }
    for (const [channel, subs] of this._channels) {
      if (subs.size || listed.has(channel)) continue;
      this._channels.delete(channel);
      this._results.delete(channel);
      this.positions.delete(channel);
    }
    /** @type {Set<string>} */
    const adopted = new Set();
    for (const [channel, item] of listed) {
      if (this._channels.has(channel)) continue;
      this._channels.set(channel, new Set());
      /** @type {{offset?: number, epoch?: string}} */
      let result = {};
      if (typeof item.offset === "number") {
        const epoch = typeof item.epoch === "string" ? item.epoch : "";
        this.positions.map.set(channel, { offset: item.offset, epoch });
        result = { offset: item.offset, epoch };
      }
      this._results.set(channel, result);
      adopted.add(channel);
    }
    return adopted;
  }

  /** @param {any} frame */
  _onReply(frame) {
    const pending = this._pending.get(frame.id);
    if (!pending) return; // timed out already
    this._pending.delete(frame.id);
    clearTimeout(pending.timer);
    if (frame.error) {
      pending.reject(new WshubError(frame.error.code, frame.error.message));
      return;
    }
    this._call(pending.onResult, frame.result);
    pending.resolve(frame.result);
  }

  /** @param {any} frame */
  _onMessage(frame) {
    const held = this._held.get(frame.channel);
    if (held) {
      held.push(frame); // delivered once the recovery's pages are read
      return;
    }
    if (frame.op === "gap") return this._onGap(frame);
    const subs = this._channels.get(frame.channel);
    if (subs && !this.positions.accept(frame.channel, frame.offset)) return; // a duplicate
    const message = toMessage(frame, false);
    this._emit("message", message);
    if (!subs) return;
    for (const sub of subs) this._call(sub.handlers.onMessage, message);
  }

  /**
   * `{"op":"gap","channel","epoch","offset"}`: the server lost messages it could not
   * refill from the history; what follows continues after `offset` in `epoch`. Unless
   * our position is there already, it moves to the frame's and recovery fails
   * (events "recovery" and "recoveryFailed", `onRecover`): reload the channel's state.
   * @param {any} frame
   */
  _onGap(frame) {
    const { channel, offset, epoch } = frame;
    const subs = this._channels.get(channel);
    if (!subs || typeof offset !== "number" || typeof epoch !== "string") return;
    const p = this.positions.get(channel);
    if (p && p.epoch === epoch && p.offset !== undefined && p.offset >= offset) return;
    this.positions.map.set(channel, { offset, epoch });
    /** @type {Recovery} */
    const recovery = { channel, recovered: false, count: 0, offset, epoch };
    this._emit("recovery", recovery);
    this._emit("recoveryFailed", recovery);
    for (const sub of subs) this._call(sub.handlers.onRecover, recovery);
  }

  /** @param {any} frame */
  _onPresence(frame) {
    /** @type {PresenceEvent} */
    const event = { op: frame.op, channel: frame.channel, client: frame.client, user: frame.user ?? null };
    this._emit(frame.op, event);
    for (const sub of this._channels.get(frame.channel) ?? []) {
      this._call(frame.op === "join" ? sub.handlers.onJoin : sub.handlers.onLeave, event);
    }
  }

  // -- subscriptions -----------------------------------------------------------------

  /** @param {string} channel */
  _sendSubscribe(channel) {
    const fields = this.positions.resubscribeFields(channel);
    const asked = fields.since !== undefined;
    const frame = { op: "subscribe", channel, ...fields };
    // Live messages may come before the reply (the server subscribed the channel itself,
    // in an on_connect hook): held until the recovered ones are delivered.
    if (asked && !this._held.has(channel)) this._held.set(channel, []);
    const applied = (/** @type {any} */ result) => {
      if (this._channels.has(channel)) this._onSubscribeResult(channel, result, asked);
    };
    const generation = this._generation;
    this.request(frame, applied).catch((/** @type {WshubError} */ error) => {
      if (error.code === "disconnected" || error.code === "closed") return; // resubscribed later
      const subs = this._channels.get(channel);
      if (!subs) return;
      if (TRANSIENT.has(error.code)) {
        // The broker is down or slow: try again on this connection, after a backoff.
        const delay = backoffDelay(2, this.options.backoffBase, this.options.backoffCap, this.options.random);
        setTimeout(() => {
          const current = generation === this._generation && this.state === "connected";
          if (current && this._channels.has(channel)) this._sendSubscribe(channel);
        }, delay);
      } else {
        this._channels.delete(channel); // refused (forbidden, bad_request): don't ask again
        this._results.delete(channel);
        this._held.delete(channel);
        this.positions.delete(channel);
        for (const sub of subs) sub.state = "unsubscribed";
      }
      for (const sub of subs) {
        sub._reject(error);
        this._call(sub.handlers.onError, error);
      }
      this._emit("error", error);
    });
  }

  /**
   * Runs synchronously with the reply: recovered messages go out before live ones.
   * @param {string} channel
   * @param {any} result
   * @param {boolean} asked
   */
  _onSubscribeResult(channel, result, asked) {
    const { messages, recovered } = this.positions.applySubscribe(channel, result, asked);
    this._deliverRecovered(channel, messages);
    const held = this._held.get(channel) ?? [];
    if (recovered && result.more && typeof result.offset === "number") {
      // Paginated: read the rest with `history`, holding live messages meanwhile (the
      // server sends those after this reply, before the pages asked for below).
      this._held.set(channel, held);
      void this._readPages(channel, result, messages.length, this._generation);
      return;
    }
    this._held.delete(channel);
    this._recoveryDone(channel, result, recovered, messages.length);
    for (const frame of held) this._onMessage(frame); // live ones before the reply; dupes dropped
  }

  /** @param {string} channel @param {any[]} items */
  _deliverRecovered(channel, items) {
    const subs = [...(this._channels.get(channel) ?? [])];
    for (const item of items) {
      const message = toMessage(item, true);
      this._emit("message", message);
      for (const sub of subs) this._call(sub.handlers.onMessage, message);
    }
  }

  /**
   * Read a paginated recovery's rest with `history` (after the last offset delivered,
   * up to the subscribe reply's `offset`), then deliver the live messages held
   * meanwhile, duplicates dropped by offset. A gap (the history moved on, another
   * epoch) or a failed read ends it as not recovered.
   * @param {string} channel @param {any} result @param {number} count @param {number} generation
   */
  async _readPages(channel, result, count, generation) {
    const target = result.offset;
    const epoch = result.epoch ?? "";
    const current = () => generation === this._generation && this._held.has(channel);
    let ok = true;
    try {
      for (;;) {
        const since = this.positions.get(channel)?.offset ?? 0;
        if (since >= target) break;
        const page = await this.request({ op: "history", channel, since, limit: target - since });
        if (!current()) return; // unsubscribed, or the connection ended: resubscribed later
        const items = page.messages ?? [];
        if (page.epoch !== epoch || !items.length || items[0].offset !== since + 1) {
          ok = false; // lost meanwhile: too much published, expired, or a new epoch
          break;
        }
        const fresh = items.filter((/** @type {any} */ m) => this.positions.accept(channel, m.offset));
        count += fresh.length;
        this._deliverRecovered(channel, fresh);
      }
    } catch (error) {
      if (!current()) return;
      this._emit("error", error);
      ok = false;
    }
    if (!current()) return;
    if (!ok) this.positions.map.set(channel, { offset: target, epoch });
    // Synchronously from here: the held live messages follow the recovered ones.
    const held = this._held.get(channel) ?? [];
    this._held.delete(channel);
    this._recoveryDone(channel, result, ok, count);
    for (const frame of held) this._onMessage(frame);
  }

  /** @param {string} channel @param {any} result @param {boolean | undefined} recovered @param {number} count */
  _recoveryDone(channel, result, recovered, count) {
    this._results.set(channel, result);
    const subs = [...(this._channels.get(channel) ?? [])];
    for (const sub of subs) this._subscribed(sub, result);
    if (recovered !== undefined) {
      /** @type {Recovery} */
      const recovery = { channel, recovered, count, offset: result.offset, epoch: result.epoch };
      this._emit("recovery", recovery);
      if (!recovered) this._emit("recoveryFailed", recovery);
      for (const sub of subs) this._call(sub.handlers.onRecover, recovery);
    }
  }

  /** @param {Subscription} sub @param {any} result */
  _subscribed(sub, result) {
    sub.state = "subscribed";
    sub._resolve(result);
    this._call(sub.handlers.onSubscribed, result);
  }

  /** @param {Subscription} sub */
  _unsubscribe(sub) {
    const subs = this._channels.get(sub.channel);
    sub.state = "unsubscribed";
    if (!subs || !subs.delete(sub) || subs.size) return;
    this._channels.delete(sub.channel);
    this._results.delete(sub.channel);
    this._held.delete(sub.channel);
    this.positions.delete(sub.channel);
    if (this.state === "connected") this.request({ op: "unsubscribe", channel: sub.channel }).catch(() => {});
  }

  // -- frames out, timers, events ----------------------------------------------------

  /** @param {Pending} pending */
  _sendPending(pending) {
    pending.sent = true;
    this._send(pending.frame);
  }

  /** @param {Record<string, any>} frame */
  _send(frame) {
    if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify(frame));
  }

  /** @param {WshubError} error @param {boolean} all also those not sent yet */
  _failPending(error, all) {
    for (const [id, pending] of this._pending) {
      if (!all && !pending.sent) continue; // still waiting for a connection
      this._pending.delete(id);
      clearTimeout(pending.timer);
      pending.reject(error);
    }
  }

  /**
   * Drop the connection when the server stays silent for the ping interval plus the
   * grace. Any frame counts (the server pings every interval whatever else it sends);
   * one timer re-armed for the time left, not one per message.
   * @param {number} [wait]
   */
  _armWatchdog(wait) {
    const ping = Number(this.welcome?.ping);
    const ws = this._ws;
    if (!(ping > 0) || !ws) return;
    const limit = ping * 1000 + this.options.pingGrace;
    this._setTimer("watchdog", wait ?? limit, () => {
      const silent = Date.now() - this._lastSeen;
      if (silent < limit) this._armWatchdog(limit - silent);
      else this._drop(ws, 1006, `heartbeat timeout: nothing from the server for ${silent} ms`);
    });
  }

  /** @param {number | undefined} expiresAt ms since the epoch */
  _scheduleRefresh(expiresAt) {
    this._clearTimer("refresh");
    if (!expiresAt || !this.options.getToken) return;
    const left = expiresAt - Date.now();
    const wait = Math.max(1000, Math.min(left - this.options.refreshMargin, left / 2));
    this._setTimer("refresh", wait, () => {
      this.refresh().catch((error) => this._emit("error", error));
    });
  }

  /** @param {string} name @param {number} ms @param {() => void} fn */
  _setTimer(name, ms, fn) {
    this._clearTimer(name);
    this._timers[name] = setTimeout(() => {
      this._timers[name] = undefined;
      fn();
    }, Math.min(ms, MAX_TIMER));
  }

  /** @param {string} name */
  _clearTimer(name) {
    const timer = this._timers[name];
    if (timer !== undefined) clearTimeout(timer);
    this._timers[name] = undefined;
  }

  /** @param {State} state @param {StateInfo} info */
  _setState(state, info) {
    const changed = state !== this.state;
    this.state = state;
    if (changed || state === "disconnected") this._emit("state", state, info);
  }

  /** @param {string} event @param {...any} args */
  _emit(event, ...args) {
    const listeners = this._listeners.get(event);
    if (!listeners || !listeners.size) {
      if (event === "error") console.warn("wshub:", args[0]);
      return;
    }
    for (const fn of [...listeners]) this._call(fn, ...args);
  }

  /**
   * A callback that throws must not break the client.
   * @param {Function | undefined} fn @param {...any} args
   */
  _call(fn, ...args) {
    if (!fn) return;
    try {
      fn(...args);
    } catch (error) {
      console.error("wshub: a callback raised", error);
    }
  }
}

/** @param {any} frame @param {boolean} recovered @returns {Message} */
function toMessage(frame, recovered) {
  /** @type {Message} */
  const message = { channel: frame.channel, data: frame.data, recovered };
  if (typeof frame.offset === "number") message.offset = frame.offset;
  if (typeof frame.from === "string") message.from = frame.from;
  return message;
}

/** Resolve "/ws" against the page: http → ws, https → wss. @param {string} url */
function resolveUrl(url) {
  if (/^wss?:\/\//i.test(url)) return url;
  const base = globalThis.location?.href;
  if (!base) return url;
  const resolved = new URL(url, base);
  resolved.protocol = resolved.protocol === "https:" ? "wss:" : "ws:";
  return resolved.toString();
}

// -- Server-Sent Events --------------------------------------------------------------

/**
 * @typedef {object} SseOptions
 * @property {string} [token] sent as the `token` query parameter (EventSource sets no headers).
 * @property {boolean} [withCredentials] send cookies cross-origin (EventSource's option).
 * @property {string} [publishUrl] the publish route (default: `url` + "/publish").
 * @property {typeof EventSource} [EventSource] the EventSource class (tests pass a fake one).
 */

/**
 * A stream of wshub messages over Server-Sent Events (`wshub.mount_sse`): the
 * browser's EventSource reconnects by itself and the server resumes from the
 * `Last-Event-ID`, so nothing is lost or repeated while the history keeps it.
 * Events, as on `Client`: "message" (message), "welcome" (frame), "join"/"leave"
 * (event), "recoveryFailed" (recovery: messages were lost, from a `gap` event),
 * "state" (state, info), "error" (error).
 */
export class SseClient {
  /**
   * @param {string} url the SSE endpoint, e.g. "/sse".
   * @param {string[]} channels
   * @param {SseOptions} [options]
   */
  constructor(url, channels, options = {}) {
    const base = globalThis.location?.href;
    const target = base ? new URL(url, base) : new URL(url);
    for (const channel of channels) target.searchParams.append("channel", channel);
    if (options.token) target.searchParams.set("token", options.token);
    this.url = target.toString();
    this.channels = [...channels];
    this.options = options;
    /** @type {State} */
    this.state = "connecting";
    /** @type {Record<string, any> | null} the last welcome frame */
    this.welcome = null;
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    const Source = options.EventSource ?? globalThis.EventSource;
    /** @type {EventSource} */
    this.source = new Source(this.url, { withCredentials: !!options.withCredentials });
    const source = this.source;
    source.onopen = () => {};
    source.onerror = () => {
      const closed = source.readyState === 2;
      this._setState(closed ? "disconnected" : "connecting", { reconnect: !closed });
    };
    source.onmessage = (/** @type {MessageEvent} */ e) => {
      const frame = JSON.parse(e.data);
      this._emit("message", toMessage(frame, false));
    };
    source.addEventListener("welcome", (/** @type {any} */ e) => {
      this.welcome = JSON.parse(e.data);
      this._setState("connected", {});
      this._emit("welcome", this.welcome);
    });
    for (const op of ["join", "leave"]) {
      source.addEventListener(op, (/** @type {any} */ e) => this._emit(op, JSON.parse(e.data)));
    }
    source.addEventListener("gap", (/** @type {any} */ e) => {
      const gap = JSON.parse(e.data);
      /** @type {Recovery} */
      const recovery = { channel: gap.channel, recovered: false, count: 0 };
      if (typeof gap.offset === "number") recovery.offset = gap.offset;
      if (typeof gap.epoch === "string") recovery.epoch = gap.epoch;
      this._emit("recoveryFailed", recovery);
    });
    source.addEventListener("close", (/** @type {any} */ e) => {
      const { code, reason } = JSON.parse(e.data);
      if (reconnectPolicy(code) === "reauth") {
        source.close(); // a new token is needed: EventSource would retry the old one
        this._setState("disconnected", { code, reason, reconnect: false });
        this._emit("error", new WshubError("unauthorized", reason || "refused", code));
      } else {
        this._setState("connecting", { code, reason, reconnect: true });
      }
    });
  }

  /**
   * Listen to an event (see the class); returns a function that removes the listener.
   * @param {string} event
   * @param {Function} fn
   * @returns {() => void}
   */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  /**
   * Publish through the HTTP route (`POST <url>/publish`), as this stream's client.
   * @param {string} channel
   * @param {any} data
   * @returns {Promise<number | undefined>} the offset, when the channel keeps history.
   */
  async publish(channel, data) {
    const target = new URL(this.options.publishUrl ?? this.url.replace(/\?.*$/, "").replace(/\/$/, "") + "/publish");
    if (this.options.token) target.searchParams.set("token", this.options.token);
    const response = await fetch(target, {
      method: "POST",
      headers: { "content-type": "application/json" },
      credentials: this.options.withCredentials ? "include" : "same-origin",
      body: JSON.stringify({ channel, data, client: this.welcome?.client }),
    });
    const body = await response.json();
    if (!response.ok) throw new WshubError(body.error?.code ?? "internal", body.error?.message ?? response.statusText);
    return body.offset;
  }

  /** Close the stream for good. */
  close() {
    this.source.close();
    this._setState("disconnected", { code: 1000, reason: "client closed", reconnect: false });
  }

  /** @param {State} state @param {StateInfo} info */
  _setState(state, info) {
    const changed = state !== this.state;
    this.state = state;
    if (changed) this._emit("state", state, info);
  }

  /** @param {string} event @param {...any} args */
  _emit(event, ...args) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (error) {
        console.error("wshub: a callback raised", error);
      }
    }
  }
}

/**
 * Subscribe to channels over Server-Sent Events: `wshub.sse("/sse", ["chat:lobby"])`.
 * @param {string} url
 * @param {string[]} channels
 * @param {SseOptions} [options]
 * @returns {SseClient}
 */
export function sse(url, channels, options = {}) {
  return new SseClient(url, channels, options);
}
