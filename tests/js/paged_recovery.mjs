// Driven by tests/integration/test_paged_recovery.py against a real server (not a
// `node --test` file): wshub.js on node's WebSocket subscribes, closes, lets another
// client publish MISSED x 60 kB, connects again and recovers them page by page.
// Usage: node [--experimental-websocket] paged_recovery.mjs URL CHANNEL MISSED
// Prints one JSON line: offsets and numbers delivered, recoveries, close codes.
import { Client } from "../../src/wshub/static/wshub.js";

const [url, channel, missedText] = process.argv.slice(2);
const missed = Number(missedText);
const pad = "x".repeat(60000);

async function until(predicate, within = 30000) {
  const deadline = Date.now() + within;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${within} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const publisher = new Client(url);
publisher.connect();
await publisher.publish(channel, { n: 0 });

const seen = [];
const recoveries = [];
const closes = [];
const client = new Client(url);
client.on("state", (state, info) => {
  if (state === "disconnected" && info.code) closes.push(info.code);
});
client.subscribe(channel, {
  since: 0,
  onMessage: (m) => seen.push(m),
  onRecover: (r) => recoveries.push(r),
});
client.connect();
await until(() => seen.length === 1);
client.close();
for (let n = 1; n <= missed; n++) await publisher.publish(channel, { n, pad });
client.connect();
await until(() => seen.length >= missed + 1 && recoveries.length === 2);
await new Promise((resolve) => setTimeout(resolve, 200)); // duplicates would show up now
client.close();
publisher.close();
const report = {
  offsets: seen.map((m) => m.offset),
  numbers: seen.map((m) => m.data.n),
  recovered: seen.map((m) => m.recovered),
  recoveries,
  closes: closes.filter((code) => code !== 1000),
};
console.log(JSON.stringify(report));
process.exit(0);
