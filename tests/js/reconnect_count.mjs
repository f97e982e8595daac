// Driven by tests/integration/test_paged_recovery.py: wshub.js against a server that
// closes every connection with 4008 right after its welcome, for WINDOW ms.
// Usage: node [--experimental-websocket] reconnect_count.mjs URL WINDOW
// Prints one JSON line: the reconnect delays the client chose.
import { Client } from "../../src/wshub/static/wshub.js";

const [url, windowText] = process.argv.slice(2);
const delays = [];
const client = new Client(url);
client.on("state", (state, info) => {
  if (state === "disconnected" && info.code === 4008 && info.delay !== undefined) delays.push(info.delay);
});
client.connect();
await new Promise((resolve) => setTimeout(resolve, Number(windowText)));
client.close();
console.log(JSON.stringify({ delays }));
process.exit(0);
