"""TypeScript declarations of an app's types, for ``wshub types --ts``.

The types are the JSON Schemas the AsyncAPI document carries under
``components/schemas`` (`wshub.ops.asyncapi.app_schemas`: namespace models, RPC params
and results), turned into TypeScript by a small converter that knows what pydantic
emits: objects (required and optional properties, ``additionalProperties``), arrays
and tuples, enums and consts, primitives, ``anyOf``/``oneOf`` (``T | null`` for
``Optional``), ``allOf`` and ``$ref``. Anything else becomes ``unknown``.

After them come the client API: `Namespaces` (namespace -> data type), `RpcMethods`
(method -> params and result) and `TypedClient`, the methods of wshub.js's ``Client``
typed by those two maps, so that ``publish("chat:lobby", {text: 1})`` fails to compile.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from wshub.ops.asyncapi import app_schemas, namespace_models, rpc_schemas

if TYPE_CHECKING:
    from wshub.hub.facade import Hub

Schema = dict[str, Any]

_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_PRIMITIVES = {
    "string": "string",
    "integer": "number",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
}

CLIENT_API = """\
/** A publication, as `onMessage` and `history` give it. */
export interface Message<T = unknown> {
  channel: string;
  data: T;
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
  client: string;
  user: string | null;
}

export interface Recovery {
  channel: string;
  recovered: boolean;
  count: number;
  offset?: number;
  epoch?: string;
}

/** An error reply: `code` is a wire code (`bad_request`, ...) or an RPCError's code. */
export interface WshubErrorShape {
  code: string;
  message: string;
  closeCode?: number;
}

export interface SubscriptionHandlers<T = unknown> {
  onMessage?: (message: Message<T>) => void;
  onJoin?: (event: PresenceEvent) => void;
  onLeave?: (event: PresenceEvent) => void;
  onRecover?: (recovery: Recovery) => void;
  onSubscribed?: (result: object) => void;
  onError?: (error: WshubErrorShape) => void;
  since?: number;
  epoch?: string;
}

export interface Subscription {
  readonly channel: string;
  unsubscribe(): void;
}

export interface HistoryPage<T = unknown> {
  offset: number;
  epoch: string;
  messages: Message<T>[];
}

/** The data type of a namespace's channels (unknown for an untyped one). */
export type NamespaceData<N extends string> = N extends keyof Namespaces ? Namespaces[N] : unknown;

/** The data type of a channel, by its namespace (the part before the first ':'). */
export type DataOf<C extends string> = C extends `${infer N}:${string}`
  ? NamespaceData<N>
  : NamespaceData<"">;

/** wshub.js's Client, typed by this app's namespaces and RPC methods. */
export interface TypedClient {
  readonly state: "connecting" | "connected" | "disconnected";
  on(event: string, fn: (...args: any[]) => void): () => void;
  connect(): void;
  close(): void;
  setToken(token: string | undefined): void;
  subscribe<C extends string>(channel: C, handlers?: SubscriptionHandlers<DataOf<C>>): Subscription;
  publish<C extends string>(channel: C, data: DataOf<C>): Promise<number | undefined>;
  presence(channel: string): Promise<Record<string, { user: string | null; info: unknown }>>;
  history<C extends string>(
    channel: C,
    options?: { since?: number; limit?: number },
  ): Promise<HistoryPage<DataOf<C>>>;
  refresh(token?: string): Promise<number | null>;
  rpc<M extends keyof RpcMethods>(
    method: M,
    params: RpcMethods[M]["params"],
  ): Promise<RpcMethods[M]["result"]>;
  rpc<T = unknown>(method: string, params?: unknown): Promise<T>;
}
"""


def _name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _key(name: str) -> str:
    return name if _IDENTIFIER.match(name) else json.dumps(name)


def _literal(value: object) -> str:
    return json.dumps(value) if value is not None else "null"


def _union(parts: list[str]) -> str:
    unique = list(dict.fromkeys(parts))
    if "unknown" in unique:
        return "unknown"
    return " | ".join(unique) if unique else "never"


def _wrap(text: str) -> str:
    """Parenthesise a union or intersection before ``[]``."""
    return f"({text})" if (" | " in text or " & " in text) else text


def _comment(schema: Schema, indent: str) -> list[str]:
    text = schema.get("description")
    if not isinstance(text, str) or not text.strip():
        return []
    lines = text.strip().replace("*/", "* /").splitlines()
    if len(lines) == 1:
        return [f"{indent}/** {lines[0]} */"]
    return [f"{indent}/**", *(f"{indent} * {line}" for line in lines), f"{indent} */"]


def ts_type(schema: object, indent: str = "") -> str:
    """The TypeScript type of a JSON Schema (``unknown`` for what it cannot say)."""
    if schema is True or not isinstance(schema, dict) or not schema:
        return "unknown"
    if "$ref" in schema:
        return _name(str(schema["$ref"]))
    if "const" in schema:
        return _literal(schema["const"])
    if isinstance(schema.get("enum"), list):
        return _union([_literal(value) for value in schema["enum"]]) or "never"
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return _union([ts_type(member, indent) for member in schema[key]])
    if isinstance(schema.get("allOf"), list):
        parts = [ts_type(member, indent) for member in schema["allOf"]]
        return " & ".join(dict.fromkeys(parts)) if parts else "unknown"
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union([ts_type({**schema, "type": one}, indent) for one in kind])
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind == "array":
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):
            return "[" + ", ".join(ts_type(item, indent) for item in prefix) + "]"
        return _wrap(ts_type(schema.get("items"), indent)) + "[]"
    if kind == "object" or "properties" in schema:
        return _object_type(schema, indent)
    return "unknown"


def _object_type(schema: Schema, indent: str) -> str:
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    if not properties:
        if isinstance(extra, dict) and extra:
            return f"Record<string, {ts_type(extra, indent)}>"
        return "Record<string, unknown>"
    inner = indent + "  "
    lines = ["{", *_property_lines(schema, inner), f"{indent}}}"]
    return "\n".join(lines)


def _property_lines(schema: Schema, indent: str) -> list[str]:
    required = set(schema.get("required") or ())
    lines: list[str] = []
    for name, prop in (schema.get("properties") or {}).items():
        lines.extend(_comment(prop if isinstance(prop, dict) else {}, indent))
        optional = "" if name in required else "?"
        lines.append(f"{indent}{_key(name)}{optional}: {ts_type(prop, indent)};")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and extra:
        lines.append(f"{indent}[key: string]: {ts_type(extra, indent)};")
    return lines


def declaration(name: str, schema: Schema) -> str:
    """``export interface Name {...}`` for an object with properties, else ``export type``."""
    lines = _comment(schema, "")
    if schema.get("type") == "object" and schema.get("properties"):
        lines.append(f"export interface {name} {{")
        lines.extend(_property_lines(schema, "  "))
        lines.append("}")
    else:
        lines.append(f"export type {name} = {ts_type(schema)};")
    return "\n".join(lines)


def declarations(hub: Hub | None) -> str:
    """The TypeScript declarations of ``hub``'s types and of the client API."""
    out = ["// Generated by `wshub types --ts`: the app's types and the client API.", ""]
    for name, schema in app_schemas(hub).items():
        out.extend([declaration(name, schema), ""])
    spaces = namespace_models(hub)
    out.append("/** Each typed namespace's data (`Namespace(model=...)`). */")
    out.append("export interface Namespaces {")
    out.extend(f"  {_key(space)}: {model.__name__};" for space, model in spaces.items())
    out.extend(["}", ""])
    out.append("/** Each RPC method's params and result. */")
    out.append("export interface RpcMethods {")
    for method in rpc_schemas(hub):
        params = method.params_model.__name__ if method.params_model else "unknown"
        result = method.result_model.__name__ if method.result_model else "unknown"
        out.append(f"  {_key(method.name)}: {{ params: {params}; result: {result} }};")
    out.extend(["}", "", CLIENT_API])
    return "\n".join(out)
