// Unit tests of wshub.js's `rpc()` and of server-side subscriptions (a welcome's
// `subscribed`, made by the server's on_connect hooks), against a fake WebSocket
// playing the server. Run with `node --test tests/js/`.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { Client } from "../../src/wshub/static/wshub.js";

function fakeSocketClass() {
  class FakeSocket {
    static instances = [];
    constructor(url, protocol) {
      this.url = url;
      this.protocol = protocol;
      this.sent = [];
      this.readyState = 0;
      FakeSocket.instances.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close() {
      this.readyState = 3;
    }
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    push(...frames) {
      this.onmessage?.({ data: frames.map((f) => JSON.stringify(f)).join("\n") });
    }
    welcome(extra = {}) {
      this.open();
      this.push({ op: "welcome", client: "c1", user: null, ping: 25, version: 1, ...extra });
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

async function until(predicate, within = 1000) {
  const deadline = Date.now() + within;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${within} ms`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

test("rpc sends method and params and resolves with any JSON result", async () => {
  const { client, sockets } = makeClient();
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  const moved = client.rpc("move", { room: "a" });
  const frame = sockets[0].lastSent("rpc");
  assert.deepEqual(frame, { op: "rpc", method: "move", params: { room: "a" }, id: frame.id });
  sockets[0].push({ id: frame.id, result: [1, "two"] });
  assert.deepEqual(await moved, [1, "two"]);
  const bare = client.rpc("ping");
  const second = sockets[0].lastSent("rpc");
  assert.deepEqual(second, { op: "rpc", method: "ping", id: second.id });
  sockets[0].push({ id: second.id, result: null });
  assert.equal(await bare, null);
});

test("rpc rejects with the server's code, and after its own timeout", async () => {
  const { client, sockets } = makeClient();
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome();
  const refused = client.rpc("buy", 1);
  const { id } = sockets[0].lastSent("rpc");
  sockets[0].push({ id, error: { code: "out_of_stock", message: "none left" } });
  await assert.rejects(refused, (err) => err.code === "out_of_stock" && err.message.includes("none left"));
  const started = Date.now();
  await assert.rejects(client.rpc("slow", 1, { timeout: 20 }), (err) => err.code === "timeout");
  assert.ok(Date.now() - started < 400);
  const dropped = client.rpc("slow", 2);
  sockets[0].drop(1012);
  await assert.rejects(dropped, (err) => err.code === "disconnected");
});

test("a welcome's server-side subscriptions are adopted: messages, subscribe() at once", async () => {
  const { client, sockets } = makeClient();
  const all = [];
  client.on("message", (m) => all.push(m));
  client.connect();
  await until(() => sockets.length);
  sockets[0].welcome({ subscribed: [{ channel: "feed:all", offset: 4, epoch: "e1" }, { channel: "team:red" }] });
  assert.equal(sockets[0].lastSent("subscribe"), undefined); // nothing to ask: the server did it
  assert.deepEqual(client.positions.get("feed:all"), { offset: 4, epoch: "e1" });
  sockets[0].push(
    { op: "message", channel: "feed:all", data: "a", offset: 4 }, // at the position: a duplicate
    { op: "message", channel: "feed:all", data: "b", offset: 5 },
    { op: "message", channel: "team:red", data: "c" },
  );
  assert.deepEqual(all.map((m) => m.data), ["b", "c"]);
  const got = [];
  const sub = client.subscribe("feed:all", { onMessage: (m) => got.push(m.data) });
  assert.deepEqual(await sub.ready, { offset: 4, epoch: "e1" });
  sockets[0].push({ op: "message", channel: "feed:all", data: "d", offset: 6 });
  assert.deepEqual(got, ["d"]);
});

test("after a reconnect a server-side channel is recovered: live ones held until the reply", async () => {
  const { client, sockets } = makeClient();
  const got = [];
  const recoveries = [];
  client.on("message", (m) => got.push([m.offset, m.recovered]));
  client.on("recovery", (r) => recoveries.push(r));
  client.connect();
  await until(() => sockets.length === 1);
  sockets[0].welcome({ subscribed: [{ channel: "feed:all", offset: 0, epoch: "e1" }, { channel: "gone" }] });
  sockets[0].push({ op: "message", channel: "feed:all", data: 1, offset: 1 });
  sockets[0].drop(1012);
  await until(() => sockets.length === 2);
  // The hook subscribed again: a live message comes before our subscribe's reply.
  sockets[1].welcome({ subscribed: [{ channel: "feed:all", offset: 3, epoch: "e1" }] });
  const sub = sockets[1].lastSent("subscribe");
  assert.deepEqual(sub, { op: "subscribe", channel: "feed:all", since: 1, epoch: "e1", id: sub.id });
  assert.equal(sockets[1].sent.filter((f) => f.op === "subscribe").length, 1); // "gone" is forgotten
  sockets[1].push({ op: "message", channel: "feed:all", data: 4, offset: 4 });
  assert.deepEqual(got, [[1, false]]); // held
  sockets[1].push(
    {
      id: sub.id,
      result: {
        offset: 4,
        epoch: "e1",
        recovered: true,
        messages: [2, 3, 4].map((n) => ({ channel: "feed:all", data: n, offset: n })),
      },
    },
    { op: "message", channel: "feed:all", data: 5, offset: 5 },
  );
  assert.deepEqual(got, [
    [1, false],
    [2, true],
    [3, true],
    [4, true],
    [5, false],
  ]);
  assert.deepEqual(
    recoveries.map((r) => [r.channel, r.recovered, r.count]),
    [["feed:all", true, 3]],
  );
});
