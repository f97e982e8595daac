// Open a WebSocket with Node's built-in client (node 20: --experimental-websocket),
// offering one subprotocol, and print how it ended as one JSON line:
// {"opened":bool,"protocol":"...","code":N,"reason":"..."}.
// Usage: node --experimental-websocket interop_close.mjs <url> <subprotocol> [origin]
const [url, protocol, origin] = process.argv.slice(2);
const init = { protocols: [protocol] };
if (origin) init.headers = { Origin: origin };
const ws = new WebSocket(url, init);
let opened = false;
ws.onopen = () => { opened = true; };
ws.onclose = (e) => {
  console.log(JSON.stringify({ opened, protocol: ws.protocol, code: e.code, reason: e.reason }));
};
setTimeout(() => { console.log(JSON.stringify({ opened, timeout: true })); process.exit(1); }, 10000);
ws.addEventListener("close", () => process.exit(0));
