// Unit tests of wshub.js's pure helpers: backoff, close-code policy, frame splitting,
// token expiry and per-channel offset tracking. Run with `node --test tests/js/`.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  backoffDelay,
  ChannelPositions,
  reconnectPolicy,
  splitFrames,
  tokenExpiry,
} from "../../src/wshub/static/wshub.js";

test("backoff doubles its ceiling per attempt up to the cap", () => {
  const top = () => 0.999999;
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, 100, 2000, top)),
    [99, 199, 399, 799, 1599, 1999, 1999],
  );
});

test("backoff has full jitter: anywhere from zero to the ceiling", () => {
  assert.equal(backoffDelay(3, 100, 10000, () => 0), 0);
  assert.equal(backoffDelay(3, 100, 10000, () => 0.5), 400);
  const samples = Array.from({ length: 2000 }, () => backoffDelay(4, 100, 10000));
  assert.ok(samples.every((d) => d >= 0 && d < 1600));
  assert.ok(Math.min(...samples) < 200 && Math.max(...samples) > 1400, "spread over the range");
});

test("backoff survives huge attempt counts", () => {
  assert.equal(backoffDelay(10_000, 500, 30000, () => 0.5), 15000);
});

test("close codes: 4001/4003 need a new token, 1013/4029 wait, the rest retry", () => {
  assert.equal(reconnectPolicy(4002), "stop");
  assert.equal(reconnectPolicy(4001), "reauth");
  assert.equal(reconnectPolicy(4003), "reauth");
  assert.equal(reconnectPolicy(1013), "later");
  assert.equal(reconnectPolicy(4029), "later");
  for (const code of [1000, 1001, 1006, 1011, 1012, 4008, 4009]) {
    assert.equal(reconnectPolicy(code), "retry");
  }
});

test("splitFrames splits packed frames and skips empty lines", () => {
  const text = '{"op":"ping"}\n{"id":1,"result":{}}\n\n{"op":"message","channel":"a","data":"x\\ny"}';
  assert.deepEqual(splitFrames(text), [
    { op: "ping" },
    { id: 1, result: {} },
    { op: "message", channel: "a", data: "x\ny" },
  ]);
});

test("splitFrames reports a bad line and keeps the others", () => {
  const bad = [];
  const frames = splitFrames('{"op":"ping"}\nnot json\n{"op":"pong"}', (err, line) => bad.push(line));
  assert.deepEqual(frames, [{ op: "ping" }, { op: "pong" }]);
  assert.deepEqual(bad, ["not json"]);
});

test("tokenExpiry reads a JWT's exp in ms, and nothing from other strings", () => {
  const payload = Buffer.from(JSON.stringify({ sub: "ada", exp: 1900000000 })).toString("base64url");
  assert.equal(tokenExpiry(`eyJhbGciOiJIUzI1NiJ9.${payload}.sig`), 1900000000 * 1000);
  const noExp = Buffer.from('{"sub":"ada"}').toString("base64url");
  assert.equal(tokenExpiry(`h.${noExp}.s`), undefined);
  assert.equal(tokenExpiry("opaque-token"), undefined);
  assert.equal(tokenExpiry("a.!!!.c"), undefined);
  assert.equal(tokenExpiry(null), undefined);
});

test("positions drop duplicates and old offsets, pass messages without offsets", () => {
  const p = new ChannelPositions();
  assert.equal(p.accept("a", 1), true);
  assert.equal(p.accept("a", 2), true);
  assert.equal(p.accept("a", 2), false);
  assert.equal(p.accept("a", 1), false);
  assert.equal(p.accept("a", 5), true);
  assert.equal(p.accept("a", undefined), true);
  assert.equal(p.get("a").offset, 5);
});

test("resubscribe asks since the last offset, with the epoch once known", () => {
  const p = new ChannelPositions();
  assert.deepEqual(p.resubscribeFields("a"), {});
  p.applySubscribe("a", { offset: 7, epoch: "e1" }, false);
  assert.deepEqual(p.resubscribeFields("a"), { since: 7, epoch: "e1" });
  p.accept("a", 8);
  assert.deepEqual(p.resubscribeFields("a"), { since: 8, epoch: "e1" });
});

test("a successful recovery returns only new messages and moves the position", () => {
  const p = new ChannelPositions();
  p.applySubscribe("a", { offset: 3, epoch: "e" }, false);
  p.accept("a", 4);
  const result = {
    offset: 6,
    epoch: "e",
    recovered: true,
    messages: [{ offset: 4 }, { offset: 5 }, { offset: 6 }],
  };
  const { messages, recovered } = p.applySubscribe("a", result, true);
  assert.equal(recovered, true);
  assert.deepEqual(
    messages.map((m) => m.offset),
    [5, 6],
  );
  assert.deepEqual(p.resubscribeFields("a"), { since: 6, epoch: "e" });
});

test("a failed recovery resets the position to the server's", () => {
  const p = new ChannelPositions();
  p.applySubscribe("a", { offset: 10, epoch: "old" }, false);
  const out = p.applySubscribe("a", { offset: 2, epoch: "new", recovered: false, messages: [] }, true);
  assert.deepEqual(out, { messages: [], recovered: false });
  assert.deepEqual(p.resubscribeFields("a"), { since: 2, epoch: "new" });
  assert.equal(p.accept("a", 3), true);
});

test("a channel without history is not tracked", () => {
  const p = new ChannelPositions();
  assert.deepEqual(p.applySubscribe("a", {}, false), { messages: [], recovered: undefined });
  assert.deepEqual(p.applySubscribe("a", { recovered: false, messages: [] }, true), {
    messages: [],
    recovered: false,
  });
  assert.equal(p.get("a"), undefined);
});

test("an empty channel's epoch is learnt after its first messages", () => {
  const p = new ChannelPositions();
  p.applySubscribe("a", { offset: 0, epoch: "" }, false);
  assert.equal(p.needsEpoch("a"), false);
  p.accept("a", 1);
  assert.equal(p.needsEpoch("a"), true);
  assert.deepEqual(p.resubscribeFields("a"), { since: 1 });
  p.learnEpoch("a", { offset: 0, epoch: "stale" }); // read before our offset: not ours
  assert.equal(p.needsEpoch("a"), true);
  p.learnEpoch("a", { offset: 1, epoch: "e9" });
  assert.equal(p.needsEpoch("a"), false);
  assert.deepEqual(p.resubscribeFields("a"), { since: 1, epoch: "e9" });
});
