// Unit tests of wshub.js's Client against a fake WebSocket playing the server:
// first-frame auth, requests, packed frames, reconnects, resubscription with recovery,
// 4001 handling, the heartbeat watchdog. Run with `node --test tests/js/`.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { Client } from "../../src/wshub/static/wshub.js";

/** A fake WebSocket class with its own list of instances; the test is the server. */
function fakeSocketClass() {
  class FakeSocket {
    static instances = [];
    constructor(url, protocol) {
      this.url = url;
      this.protocol = protocol;
      this.sent = [];
      this.readyState = 0;
      this.closedWith = null;
      FakeSocket.instances.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }
    // -- the server's side
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    push(...frames) {
      this.onmessage?.({ data: frames.map((f) => JSON.stringify(f)).join("\n") });
    }
    welcome(ping = 25) {
      this.open();
      this.push({ op: "welcome", client: "c1", user: null, ping, version: 1 });
    }
    drop(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    lastSent(op) {
      return this.sent.filter((f) => f.op === op).at(-1);
    }
  }
  return FakeSocket;
}

const clients = [];

/** A client on a fake socket class, with fast, deterministic timers. */
function makeClient(options = {}) {
  const WebSocket = fakeSocketClass();
  const client = new Client("ws://test/ws", {
    WebSocket,
    backoffBase: 2,
    backoffCap: 10,
    random: () => 0.5,
    requestTimeout: 500,
    ...options,
  });
  clients.push(client);
  return { client, sockets: WebSocket.instances };
}

afterEach(() => {
  while (clients.length) clients.pop().close();
});

/** Poll until `predicate()` is truthy, failing after `within` ms. */
async function until(predicate, within = 1000) {
  const deadline = Date.now() + within;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${within} ms`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

test("the first frame is connect with the token; welcome makes it connected", async () => {
  const { client, sockets } = makeClient({ token: "t0k" });
  const states = [];
  client.on("state", (s) => states.push(s));
  client.connect();
  await until(() => sockets.length === 1);
  assert.equal(sockets[0].protocol, "wshub.v1.json");
  sockets[0].open();
  assert.deepEqual(sockets[0].sent, [{ op: "connect", token: "t0k" }]);
  assert.equal(client.state, "connecting");
  sockets[0].welcome();
  assert.equal(client.state, "connected");
  assert.deepEqual(states, ["connecting", "connected"]);
  assert.equal(client.welcome.client, "c1");
});

test("connect without a token sends a bare connect frame", async () => {
  const { client, sockets } = makeClient();
  client.connect();
  await until(() => sockets.length === 1);
  sockets[0].open();
  assert.deepEqual(sockets[0].sent, [{ op: "connect" }]);
});

test("requests get ids, and replies in a packed message resolve them", async () => {
  const { client, sockets } = makeClient();
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  const first = client.publish("room", { n: 1 });
  const second = client.presence("room");
  const [a, b] = sockets[0].sent.slice(-2);
  assert.deepEqual(a, { op: "publish", channel: "room", data: { n: 1 }, id: a.id });
  assert.notEqual(a.id, b.id);
  sockets[0].push({ id: b.id, result: { clients: { x: { user: null, info: null } } } }, { id: a.id, result: { offset: 7 } });
  assert.equal(await first, 7);
  assert.deepEqual(await second, { x: { user: null, info: null } });
});

test("an error reply rejects with its code", async () => {
  const { client, sockets } = makeClient();
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  const publish = client.publish("x", 1);
  const { id } = sockets[0].lastSent("publish");
  sockets[0].push({ id, error: { code: "forbidden", message: "no" } });
  await assert.rejects(publish, (err) => err.code === "forbidden");
});

test("requests made while connecting are sent after welcome", async () => {
  const { client, sockets } = makeClient();
  client.connect();
  const publish = client.publish("x", 1);
  await until(() => sockets.length);
  sockets[0].open();
  assert.equal(sockets[0].lastSent("publish"), undefined);
  sockets[0].welcome();
  const { id } = sockets[0].lastSent("publish");
  sockets[0].push({ id, result: {} });
  assert.equal(await publish, undefined);
});

test("a request without reply times out", async () => {
  const { client, sockets } = makeClient({ requestTimeout: 20 });
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  await assert.rejects(client.history("x"), (err) => err.code === "timeout");
});

test("requests in flight are rejected when the connection drops", async () => {
  const { client, sockets } = makeClient();
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  const publish = client.publish("x", 1);
  sockets[0].drop(1012, "restart");
  await assert.rejects(publish, (err) => err.code === "disconnected");
});

test("pings are answered with pongs", async () => {
  const { client, sockets } = makeClient();
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  sockets[0].push({ op: "ping" });
  assert.deepEqual(sockets[0].sent.at(-1), { op: "pong" });
});

test("messages reach the subscription, in order, and presence events too", async () => {
  const { client, sockets } = makeClient();
  const got = [];
  const joins = [];
  client.subscribe("chat:a", { onMessage: (m) => got.push(m), onJoin: (e) => joins.push(e) });
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  const sub = sockets[0].lastSent("subscribe");
  assert.deepEqual(sub, { op: "subscribe", channel: "chat:a", id: sub.id });
  sockets[0].push(
    { id: sub.id, result: { offset: 0, epoch: "" } },
    { op: "join", channel: "chat:a", client: "c2", user: "bo" },
    { op: "message", channel: "chat:a", data: "one", offset: 1, from: "c2" },
    { op: "message", channel: "chat:a", data: "two", offset: 2, from: "c2" },
  );
  assert.deepEqual(
    got.map((m) => [m.data, m.offset, m.from, m.recovered]),
    [
      ["one", 1, "c2", false],
      ["two", 2, "c2", false],
    ],
  );
  assert.deepEqual(joins, [{ op: "join", channel: "chat:a", client: "c2", user: "bo" }]);
});

test("after a reconnect it resubscribes since the last offset and recovers before live", async () => {
  const { client, sockets } = makeClient();
  const got = [];
  const recoveries = [];
  client.subscribe("chat:a", {
    onMessage: (m) => got.push([m.data, m.recovered]),
    onRecover: (r) => recoveries.push(r),
  });
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  const first = sockets[0].lastSent("subscribe");
  sockets[0].push(
    { id: first.id, result: { offset: 4, epoch: "e1" } },
    { op: "message", channel: "chat:a", data: "m5", offset: 5 },
  );
  sockets[0].drop(1001, "server shutting down");
  assert.equal(client.state, "disconnected");
  await until(() => sockets.length === 2);
  sockets[1].welcome();
  const again = sockets[1].lastSent("subscribe");
  assert.deepEqual(again, { op: "subscribe", channel: "chat:a", since: 5, epoch: "e1", id: again.id });
  const recovered = [5, 6, 7].map((n) => ({ channel: "chat:a", data: `m${n}`, offset: n }));
  sockets[1].push(
    { id: again.id, result: { offset: 7, epoch: "e1", recovered: true, messages: recovered } },
    { op: "message", channel: "chat:a", data: "m7", offset: 7 }, // a duplicate
    { op: "message", channel: "chat:a", data: "m8", offset: 8 },
  );
  assert.deepEqual(got, [
    ["m5", false],
    ["m6", true],
    ["m7", true],
    ["m8", false],
  ]);
  assert.deepEqual(recoveries, [{ channel: "chat:a", recovered: true, count: 2, offset: 7, epoch: "e1" }]);
});

test("a failed recovery is reported to the subscription and as an event", async () => {
  const { client, sockets } = makeClient();
  const recoveries = [];
  const events = [];
  client.subscribe("chat:a", { onRecover: (r) => recoveries.push(r.recovered) });
  const failed = [];
  client.on("recovery", (r) => events.push(r));
  client.on("recoveryFailed", (r) => failed.push(r.channel));
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  sockets[0].push({ id: sockets[0].lastSent("subscribe").id, result: { offset: 9, epoch: "e1" } });
  sockets[0].drop(4008, "slow consumer");
  await until(() => sockets.length === 2);
  sockets[1].welcome();
  const again = sockets[1].lastSent("subscribe");
  assert.equal(again.since, 9);
  sockets[1].push({ id: again.id, result: { offset: 1, epoch: "e2", recovered: false, messages: [] } });
  assert.deepEqual(recoveries, [false]);
  assert.equal(events[0].recovered, false);
  assert.equal(events[0].channel, "chat:a");
  assert.deepEqual(failed, ["chat:a"]);
  assert.deepEqual(client.positions.resubscribeFields("chat:a"), { since: 1, epoch: "e2" });
});

test("no history read for the epoch: every subscribe reply carries it", async () => {
  const { client, sockets } = makeClient();
  client.subscribe("chat:a");
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  sockets[0].push(
    { id: sockets[0].lastSent("subscribe").id, result: { offset: 0, epoch: "ep" } },
    { op: "message", channel: "chat:a", data: 1, offset: 1 },
  );
  await tick();
  assert.equal(sockets[0].lastSent("history"), undefined);
  assert.deepEqual(client.positions.resubscribeFields("chat:a"), { since: 1, epoch: "ep" });
});

test("a gap frame moves the position and fails recovery; later messages are delivered", async () => {
  const { client, sockets } = makeClient();
  const recoveries = [];
  const data = [];
  client.subscribe("chat:a", { onRecover: (r) => recoveries.push(r), onMessage: (m) => data.push(m.data) });
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  sockets[0].push(
    { id: sockets[0].lastSent("subscribe").id, result: { offset: 5, epoch: "e1" } },
    { op: "message", channel: "chat:a", data: 6, offset: 6 },
    { op: "gap", channel: "chat:a", epoch: "e2", offset: 0 },
    { op: "message", channel: "chat:a", data: 1, offset: 1 },
    { op: "gap", channel: "chat:a", epoch: "e2", offset: 1 }, // nothing lost for us
  );
  await tick();
  assert.deepEqual(data, [6, 1]);
  assert.deepEqual(recoveries.map((r) => [r.recovered, r.offset, r.epoch]), [[false, 0, "e2"]]);
  assert.deepEqual(client.positions.resubscribeFields("chat:a"), { since: 1, epoch: "e2" });
});

test("publish with retry resends under the same idempotency key until it succeeds", async () => {
  const { client, sockets } = makeClient();
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  const published = client.publish("chat:a", { n: 1 }, { retry: true });
  await until(() => sockets[0].lastSent("publish"));
  const first = sockets[0].lastSent("publish");
  assert.equal(typeof first.idempotency_key, "string");
  sockets[0].push({ id: first.id, error: { code: "timeout", message: "no answer" } });
  await until(() => sockets[0].lastSent("publish").id !== first.id);
  const second = sockets[0].lastSent("publish");
  assert.equal(second.idempotency_key, first.idempotency_key);
  sockets[0].push({ id: second.id, result: { offset: 7 } });
  assert.equal(await published, 7);
});

test("a refused subscribe rejects ready, calls onError and is not retried", async () => {
  const { client, sockets } = makeClient();
  const errors = [];
  client.on("error", () => {});
  const sub = client.subscribe("user:bo", { onError: (e) => errors.push(e.code) });
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  sockets[0].push({ id: sockets[0].lastSent("subscribe").id, error: { code: "forbidden", message: "no" } });
  await assert.rejects(sub.ready, (err) => err.code === "forbidden");
  assert.deepEqual(errors, ["forbidden"]);
  assert.equal(sub.state, "unsubscribed");
  sockets[0].drop(1012);
  await until(() => sockets.length === 2);
  sockets[1].welcome();
  assert.equal(sockets[1].lastSent("subscribe"), undefined);
});

test("unsubscribe goes on the wire only when the channel's last subscription leaves", async () => {
  const { client, sockets } = makeClient();
  const one = client.subscribe("a");
  const two = client.subscribe("a");
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  assert.equal(sockets[0].sent.filter((f) => f.op === "subscribe").length, 1);
  one.unsubscribe();
  assert.equal(sockets[0].lastSent("unsubscribe"), undefined);
  two.unsubscribe();
  assert.equal(sockets[0].lastSent("unsubscribe").channel, "a");
});

test("reconnect delays grow with full jitter and reset after welcome", async () => {
  const { client, sockets } = makeClient({ backoffBase: 4, backoffCap: 1000 });
  const delays = [];
  client.on("state", (state, info) => state === "disconnected" && delays.push(info.delay));
  client.connect();
  for (let n = 1; n <= 4; n++) {
    await until(() => sockets.length === n);
    sockets[n - 1].drop(1006);
  }
  await until(() => sockets.length === 5);
  sockets[4].welcome();
  sockets[4].drop(1012);
  assert.deepEqual(delays, [2, 4, 8, 16, 2]); // random() = 0.5 of 4, 8, 16, 32, then 4 again
});

test("1013 waits at least the base delay", async () => {
  const { client } = makeClient({ backoffBase: 8, random: () => 0 });
  const delays = [];
  client.on("state", (state, info) => state === "disconnected" && delays.push(info.delay));
  client.connect();
  await until(() => client._ws);
  client._ws.drop(1013, "too many connections");
  assert.deepEqual(delays, [8]);
});

test("4001 with a static token stops and reports, without reconnecting", async () => {
  const { client, sockets } = makeClient({ token: "bad" });
  const errors = [];
  const states = [];
  client.on("error", (e) => errors.push([e.code, e.closeCode]));
  client.on("state", (s, info) => states.push([s, info.reconnect]));
  client.connect();
  await until(() => sockets.length);
  sockets[0].open();
  sockets[0].drop(4001, "invalid token");
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(sockets.length, 1);
  assert.deepEqual(errors, [["unauthorized", 4001]]);
  assert.deepEqual(states.at(-1), ["disconnected", false]);
  await assert.rejects(client.publish("x", 1), (err) => err.code === "closed");
});

test("4001 asks getToken again: a new token reconnects, the same one stops", async () => {
  const tokens = ["one", "two", "two"];
  const asked = [];
  const { client, sockets } = makeClient({
    getToken: async (info) => {
      asked.push(info.rejected);
      return tokens.shift();
    },
  });
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  client.connect();
  await until(() => sockets.length === 1);
  sockets[0].open();
  sockets[0].drop(4001, "token expired");
  await until(() => sockets.length === 2);
  sockets[1].open();
  assert.deepEqual(sockets[1].sent[0], { op: "connect", token: "two" });
  sockets[1].drop(4001, "token expired");
  await until(() => errors.length === 1);
  assert.equal(sockets.length, 2);
  assert.deepEqual(asked, [false, true, true]);
  assert.equal(client.state, "disconnected");
});

test("4003 with getToken returning nothing stops", async () => {
  const { client, sockets } = makeClient({ getToken: () => null });
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  client.connect();
  await until(() => sockets.length === 1);
  sockets[0].drop(4003, "origin not allowed");
  await until(() => errors.length === 1);
  assert.deepEqual(errors, ["forbidden"]);
  assert.equal(sockets.length, 1);
});

test("the watchdog reconnects when the server goes silent", async () => {
  const { client, sockets } = makeClient({ pingGrace: 30 });
  const reasons = [];
  client.on("state", (s, info) => s === "disconnected" && reasons.push(info.reason));
  client.connect();
  await until(() => sockets.length === 1);
  sockets[0].welcome(0.02); // ping every 20 ms, so silence past 50 ms is fatal
  await until(() => sockets.length === 2, 2000);
  assert.match(reasons[0], /heartbeat timeout/);
  assert.equal(sockets[0].closedWith.code, 4000);
});

test("traffic keeps the watchdog quiet", async () => {
  const { client, sockets } = makeClient({ pingGrace: 30 });
  client.connect();
  await until(() => sockets.length === 1);
  sockets[0].welcome(0.02);
  for (let i = 0; i < 10; i++) {
    await new Promise((resolve) => setTimeout(resolve, 15));
    sockets[0].push({ op: "ping" });
  }
  assert.equal(sockets.length, 1);
  assert.equal(client.state, "connected");
});

test("no welcome within connectTimeout counts as a failed attempt", async () => {
  const { client, sockets } = makeClient({ connectTimeout: 20 });
  client.connect();
  await until(() => sockets.length === 1);
  sockets[0].open();
  await until(() => sockets.length === 2);
  assert.equal(sockets[0].closedWith.code, 4000);
});

test("close stops reconnecting and rejects queued requests", async () => {
  const { client, sockets } = makeClient();
  client.connect();
  await until(() => sockets.length === 1);
  const publish = client.publish("x", 1);
  client.close();
  await assert.rejects(publish, (err) => err.code === "closed");
  assert.equal(sockets[0].closedWith.code, 1000);
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.equal(sockets.length, 1);
  assert.equal(client.state, "disconnected");
});

test("a callback that throws does not break delivery to others", async () => {
  const { client, sockets } = makeClient();
  const got = [];
  const original = console.error;
  console.error = () => {};
  try {
    client.subscribe("a", { onMessage: () => { throw new Error("app bug"); } });
    client.subscribe("a", { onMessage: (m) => got.push(m.data) });
    client.connect();
    await until(() => sockets.length);
    sockets[0].welcome();
    sockets[0].push({ op: "message", channel: "a", data: 1 }, { op: "message", channel: "a", data: 2 });
  } finally {
    console.error = original;
  }
  assert.deepEqual(got, [1, 2]);
});

test("a recovery with more reads the rest with history, holding live messages until then", async () => {
  const { client, sockets } = makeClient();
  const got = [];
  const recoveries = [];
  client.subscribe("chat:p", {
    since: 2,
    epoch: "e1",
    onMessage: (m) => got.push([m.offset, m.recovered]),
    onRecover: (r) => recoveries.push(r),
  });
  client.connect();
  await until(() => sockets.length);
  const ws = sockets[0];
  ws.welcome();
  const sub = ws.lastSent("subscribe");
  assert.deepEqual(sub, { op: "subscribe", channel: "chat:p", since: 2, epoch: "e1", id: sub.id });
  const item = (n) => ({ channel: "chat:p", data: n, offset: n });
  ws.push(
    { id: sub.id, result: { offset: 8, epoch: "e1", recovered: true, more: true, messages: [item(3), item(4)] } },
    { op: "message", channel: "chat:p", data: 9, offset: 9 }, // live, before pages 2..n
  );
  assert.deepEqual(got, [[3, true], [4, true]]);
  await until(() => ws.lastSent("history"));
  const page2 = ws.lastSent("history");
  assert.deepEqual(page2, { op: "history", channel: "chat:p", since: 4, limit: 4, id: page2.id });
  ws.push(
    { id: page2.id, result: { offset: 9, epoch: "e1", more: true, messages: [item(5), item(6)] } },
    { op: "message", channel: "chat:p", data: 10, offset: 10 },
  );
  await until(() => ws.lastSent("history").id !== page2.id);
  const page3 = ws.lastSent("history");
  assert.deepEqual(page3, { op: "history", channel: "chat:p", since: 6, limit: 2, id: page3.id });
  assert.deepEqual(recoveries, []); // not before the last page
  ws.push({ id: page3.id, result: { offset: 10, epoch: "e1", messages: [item(7), item(8)] } });
  await until(() => recoveries.length);
  assert.deepEqual(got.map(([n]) => n), [3, 4, 5, 6, 7, 8, 9, 10]);
  assert.deepEqual(got.map(([, r]) => r), [true, true, true, true, true, true, false, false]);
  assert.deepEqual(recoveries, [{ channel: "chat:p", recovered: true, count: 6, offset: 8, epoch: "e1" }]);
  ws.push({ op: "message", channel: "chat:p", data: 10, offset: 10 }, { op: "message", channel: "chat:p", data: 11, offset: 11 });
  assert.deepEqual(got.map(([n]) => n).slice(-1), [11]); // the duplicate 10 was dropped
});

test("a paginated recovery that finds a gap reports recovered false and goes live", async () => {
  const { client, sockets } = makeClient();
  const got = [];
  const recoveries = [];
  client.subscribe("chat:g", { since: 2, epoch: "e1", onMessage: (m) => got.push(m.offset), onRecover: (r) => recoveries.push(r) });
  client.connect();
  await until(() => sockets.length);
  const ws = sockets[0];
  ws.welcome();
  const sub = ws.lastSent("subscribe");
  const item = (n) => ({ channel: "chat:g", data: n, offset: n });
  ws.push(
    { id: sub.id, result: { offset: 8, epoch: "e1", recovered: true, more: true, messages: [item(3)] } },
    { op: "message", channel: "chat:g", data: 9, offset: 9 },
  );
  await until(() => ws.lastSent("history"));
  ws.push({ id: ws.lastSent("history").id, result: { offset: 9, epoch: "e1", messages: [item(7), item(8)] } });
  await until(() => recoveries.length);
  assert.equal(recoveries[0].recovered, false);
  assert.deepEqual(got, [3, 9]);
});

test("4008 closes in a row back off longer each time, even after a welcome", async () => {
  const { client, sockets } = makeClient({ backoffBase: 4, backoffCap: 1000, random: () => 0 });
  const delays = [];
  client.on("state", (state, info) => state === "disconnected" && delays.push(info.delay));
  client.connect();
  for (let n = 1; n <= 4; n++) {
    await until(() => sockets.length === n);
    sockets[n - 1].welcome();
    sockets[n - 1].drop(4008, "slow consumer: send queue overflow");
  }
  await until(() => sockets.length === 5);
  sockets[4].welcome();
  sockets[4].drop(1001);
  // Equal jitter with random() = 0: half of 4, 8, 16, 32; then another code resets it.
  assert.deepEqual(delays, [2, 4, 8, 16, 0]);
});
