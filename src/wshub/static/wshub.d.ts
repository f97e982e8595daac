// Type declarations for wshub.js, the browser client of wshub's wire protocol v1
// (docs/protocol.md). Keep in step with the JSDoc in wshub.js.

export declare const PROTOCOL: "wshub.v1.json";

export type State = "connecting" | "connected" | "disconnected";

export interface ClientOptions {
  /** Credentials sent in the first frame. */
  token?: string;
  /** Asked for a token before every connection and refresh; `rejected` is true after a 4001/4003. */
  getToken?: (info: { rejected: boolean }) => string | null | undefined | Promise<string | null | undefined>;
  /** First reconnect delay ceiling, in ms (500). */
  backoffBase?: number;
  /** Largest reconnect delay ceiling, in ms (20000). */
  backoffCap?: number;
  /** ms a connection must stay up for a 4008 close not to count as one more in a row (10000). */
  healthyAfter?: number;
  /** ms before a request without reply is rejected (10000). */
  requestTimeout?: number;
  /** ms to open the socket and get `welcome` (10000). */
  connectTimeout?: number;
  /** ms of silence tolerated past the announced ping interval (10000). */
  pingGrace?: number;
  /** Refresh a JWT this many ms before it expires (30000). */
  refreshMargin?: number;
  /** The WebSocket subprotocol ("wshub.v1.json"). */
  subprotocol?: string;
  /** The WebSocket class (tests pass a fake one). */
  WebSocket?: typeof WebSocket;
  /** A source of numbers in [0, 1) for the jitter (Math.random). */
  random?: () => number;
}

export interface Message {
  channel: string;
  data: any;
  /** Position in the channel's history, when it keeps one. */
  offset?: number;
  /** The publishing client's id, when a client published it. */
  from?: string;
  /** True for messages recovered after a reconnect. */
  recovered: boolean;
}

export interface PresenceEvent {
  op: "join" | "leave";
  channel: string;
  /** The connection's id. */
  client: string;
  user: string | null;
}

export interface Recovery {
  channel: string;
  /** false: messages were lost; reload the channel's state. */
  recovered: boolean;
  /** Messages recovered. */
  count: number;
  /** The channel's position after the resubscribe. */
  offset?: number;
  epoch?: string;
}

export interface SubscriptionHandlers {
  onMessage?: (message: Message) => void;
  onJoin?: (event: PresenceEvent) => void;
  onLeave?: (event: PresenceEvent) => void;
  /** After every resubscribe that asked for recovery. */
  onRecover?: (recovery: Recovery) => void;
  /** After every successful (re)subscribe. */
  onSubscribed?: (result: object) => void;
  /** The server refused the subscribe. */
  onError?: (error: WshubError) => void;
  /** Recover from this offset on the first subscribe (0: all kept). */
  since?: number;
  /** The epoch `since` belongs to. */
  epoch?: string;
}

export interface StateInfo {
  /** Close code of the connection that ended. */
  code?: number;
  /** Its close reason. */
  reason?: string;
  /** Whether the client will reconnect by itself. */
  reconnect?: boolean;
  /** ms until the next attempt. */
  delay?: number;
  /** Reconnect attempts since the last welcome. */
  attempt?: number;
}

export interface HistoryPage {
  offset: number;
  epoch: string;
  messages: Message[];
}

export interface Welcome {
  op: "welcome";
  client: string;
  user: string | null;
  ping: number;
  version: number;
}

/**
 * An error from the server (`code` from the protocol) or from the client
 * (`timeout`, `disconnected`, `closed`, `unauthorized`, `forbidden`, `bad_frame`).
 */
export declare class WshubError extends Error {
  constructor(code: string, message: string, closeCode?: number);
  code: string;
  closeCode: number | undefined;
}

/** Exponential backoff with full jitter: a random delay in [0, min(cap, base * 2^attempt)) ms. */
export declare function backoffDelay(attempt: number, base: number, cap: number, random?: () => number): number;
/** The delay before reconnecting after the `streak`-th 4008 close in a row, in ms. */
export declare function slowConsumerDelay(streak: number, base: number, cap: number, random?: () => number): number;
/** What a close code asks of the client. */
export declare function reconnectPolicy(code: number): "stop" | "reauth" | "later" | "retry";
/** Split a `\n`-packed text message into frames; `onError` gets lines that are not JSON. */
export declare function splitFrames(text: string, onError?: (error: Error, line: string) => void): any[];
/** A JWT's `exp` in ms, or undefined. */
export declare function tokenExpiry(token: string | null | undefined): number | undefined;

/** The last offset and epoch seen per channel, for resubscribing with `since`. */
export declare class ChannelPositions {
  constructor();
  map: Map<string, { offset?: number; epoch: string }>;
  get(channel: string): { offset?: number; epoch: string } | undefined;
  delete(channel: string): void;
  resubscribeFields(channel: string): { since?: number; epoch?: string };
  accept(channel: string, offset: number | undefined): boolean;
  needsEpoch(channel: string): boolean;
  learnEpoch(channel: string, position: { offset?: number; epoch?: string }): void;
  applySubscribe(
    channel: string,
    result: { offset?: number; epoch?: string; recovered?: boolean; messages?: any[] },
    asked: boolean,
  ): { messages: any[]; recovered: boolean | undefined };
}

/** One subscription to a channel; `client.subscribe()` returns it. */
export declare class Subscription {
  constructor(client: Client, channel: string, handlers: SubscriptionHandlers);
  readonly client: Client;
  readonly channel: string;
  handlers: SubscriptionHandlers;
  state: "subscribing" | "subscribed" | "unsubscribed";
  /** Resolves with the first subscribe result; rejects when the server refuses. */
  ready: Promise<any>;
  /** Leave the channel (the last subscription to it unsubscribes on the wire). */
  unsubscribe(): void;
}

export interface ClientEvents {
  state: (state: State, info: StateInfo) => void;
  welcome: (frame: Welcome) => void;
  message: (message: Message) => void;
  join: (event: PresenceEvent) => void;
  leave: (event: PresenceEvent) => void;
  recovery: (recovery: Recovery) => void;
  recoveryFailed: (recovery: Recovery) => void;
  error: (error: WshubError) => void;
}

/** A wshub connection that reconnects, resubscribes and recovers by itself. */
export declare class Client {
  /** @param url the protocol endpoint, e.g. "/ws" (resolved against the page) or "wss://host/ws". */
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  options: ClientOptions;
  state: State;
  /** The last welcome frame. */
  welcome: Welcome | null;
  positions: ChannelPositions;
  on<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): () => void;
  on(event: string, fn: (...args: any[]) => void): () => void;
  /** Start connecting (and keep reconnecting until `close()`). Idempotent. */
  connect(): void;
  /** Close the connection and stop reconnecting. Subscriptions stay; `connect()` resumes them. */
  close(): void;
  /** Replace the static token; takes effect on the next connection. */
  setToken(token: string | undefined): void;
  /** Subscribe to a channel. Returns at once; the subscribe is sent when connected. */
  subscribe(channel: string, handlers?: SubscriptionHandlers): Subscription;
  /** Publish data to a channel; resolves with the offset, when the channel keeps history. */
  publish(channel: string, data: any): Promise<number | undefined>;
  /** Who is in a channel, keyed by client id. */
  presence(channel: string): Promise<Record<string, { user: string | null; info: any }>>;
  /** Read a channel's history. */
  history(channel: string, options?: { since?: number; limit?: number }): Promise<HistoryPage>;
  /**
   * Call a server method (`@hub.rpc`). Rejects with a `WshubError` whose `code` is the
   * server's (`not_found`, `bad_request`, an RPCError's own code, `internal`,
   * `rate_limited`) or the client's (`timeout`, `disconnected`, `closed`).
   * Types for `T` come from `wshub types --ts`.
   */
  rpc<T = any>(method: string, params?: any, options?: { timeout?: number }): Promise<T>;
  /** Hand the server a new token before the current one expires; resolves with the new expiry. */
  refresh(token?: string): Promise<number | null>;
  /** Send a request frame (an `id` is added) and wait for its reply's `result`. */
  request(frame: Record<string, any>, onResult?: (result: any) => void): Promise<any>;
}

export interface SseOptions {
  /** Sent as the `token` query parameter (EventSource sets no headers). */
  token?: string;
  /** Send cookies cross-origin (EventSource's option). */
  withCredentials?: boolean;
  /** The publish route (default: `url` + "/publish"). */
  publishUrl?: string;
  /** The EventSource class (tests pass a fake one). */
  EventSource?: typeof EventSource;
}

export interface SseClientEvents {
  state: (state: State, info: StateInfo) => void;
  welcome: (frame: Welcome) => void;
  message: (message: Message) => void;
  join: (event: PresenceEvent) => void;
  leave: (event: PresenceEvent) => void;
  recoveryFailed: (recovery: Recovery) => void;
  error: (error: WshubError) => void;
}

/** A stream of wshub messages over Server-Sent Events (`wshub.mount_sse`). */
export declare class SseClient {
  constructor(url: string, channels: string[], options?: SseOptions);
  readonly url: string;
  readonly channels: string[];
  options: SseOptions;
  state: State;
  welcome: Welcome | null;
  source: EventSource;
  on<E extends keyof SseClientEvents>(event: E, fn: SseClientEvents[E]): () => void;
  on(event: string, fn: (...args: any[]) => void): () => void;
  /** Publish through the HTTP route (`POST <url>/publish`), as this stream's client. */
  publish(channel: string, data: any): Promise<number | undefined>;
  /** Close the stream for good. */
  close(): void;
}

/** Subscribe to channels over Server-Sent Events: `sse("/sse", ["chat:lobby"])`. */
export declare function sse(url: string, channels: string[], options?: SseOptions): SseClient;
