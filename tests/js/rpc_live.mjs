// Driven by tests/integration/test_connect_hooks.py against a real server (not a
// `node --test` file): wshub.js on node's WebSocket calls RPC methods, receives the
// channel an on_connect hook subscribed it to (feed:all), is closed, misses two
// publications, connects again and recovers them once each.
// Usage: node [--experimental-websocket] rpc_live.mjs URL
// Prints one JSON line: what the RPCs returned, their errors, the offsets delivered.
import { Client } from "../../src/wshub/static/wshub.js";

const [url] = process.argv.slice(2);

async function until(predicate, within = 20000) {
  const deadline = Date.now() + within;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${within} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const publisher = new Client(url);
publisher.connect();

const seen = [];
const recoveries = [];
const welcomes = [];
const client = new Client(url, { backoffBase: 20, backoffCap: 50 });
client.on("message", (m) => {
  if (m.channel === "feed:all") seen.push(m);
});
client.on("welcome", (frame) => welcomes.push(frame.subscribed));
client.on("recovery", (r) => recoveries.push(r));
client.connect();
await until(() => welcomes.length === 1);

const emitted = [await client.rpc("emit", { n: 1 }), await client.rpc("emit", { n: 2 })];
const errors = [];
for (const method of ["fail", "x"]) {
  try {
    await client.rpc(method, { any: 1 });
    errors.push(["resolved"]);
  } catch (error) {
    errors.push([error.code, error.message]);
  }
}
await until(() => seen.length === 2);
await new Promise((resolve) => setTimeout(resolve, 100)); // the epoch read (offsets came from "")
client.close();
await publisher.rpc("emit", { n: 3 });
await publisher.rpc("emit", { n: 4 });
client.connect();
await until(() => client.state === "connected");
await publisher.rpc("emit", { n: 5 });
await until(() => seen.length >= 5 && recoveries.length >= 1);
await new Promise((resolve) => setTimeout(resolve, 200)); // duplicates would show up now
client.close();
publisher.close();
console.log(
  JSON.stringify({
    emitted,
    errors,
    subscribed: welcomes[0],
    offsets: seen.map((m) => m.offset),
    numbers: seen.map((m) => m.data.n),
    recovered: seen.map((m) => m.recovered),
    recoveries,
  }),
);
process.exit(0);
