// `berth events`: stream the daemon's events and print one line per event, like ctr:
// `<time> <namespace> <topic> <event as JSON>`.
import {
  createRegistry,
  type DescField,
  type DescMessage,
  type Message,
  type Registry,
  ScalarType,
  toJson,
} from "@bufbuild/protobuf";
import { base64Encode } from "@bufbuild/protobuf/wire";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { file_containerd_events_content } from "../../gen/containerd/events/content_pb.js";
import { file_containerd_events_namespace } from "../../gen/containerd/events/namespace_pb.js";
import { Events } from "../../gen/containerd/services/events/v1/events_pb.js";
import type { Envelope } from "../../gen/containerd/types/event_pb.js";
import type { Wire } from "./context.js";
import { goTimeString, rfc3339Nano, toJsonText, wantsJson } from "./table.js";

/** Event payload types this client can decode (type URLs like `containerd.events.NamespaceCreate`). */
export const eventRegistry: Registry = createRegistry(
  file_containerd_events_namespace,
  file_containerd_events_content,
);

// JSON as Go's encoding/json writes containerd's generated event structs: proto field names,
// zero values left out, 64-bit integers as numbers, bytes as base64, maps sorted by key,
// timestamps as RFC 3339, and <, >, & escaped.

function goString(s: string): string {
  return JSON.stringify(s).replace(
    /[<>&\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

function isZeroScalar(v: unknown): boolean {
  return (
    v === undefined ||
    v === 0 ||
    v === 0n ||
    v === "" ||
    v === false ||
    (v instanceof Uint8Array && v.length === 0)
  );
}

function goScalar(type: ScalarType, v: unknown): string {
  switch (type) {
    case ScalarType.STRING:
      return goString(v as string);
    case ScalarType.BYTES:
      return goString(base64Encode(v as Uint8Array));
    case ScalarType.BOOL:
      return v ? "true" : "false";
    default:
      return String(v);
  }
}

function goMessage(desc: DescMessage, msg: Record<string, unknown>): string {
  if (desc.typeName === "google.protobuf.Timestamp") {
    return goString(rfc3339Nano(msg as unknown as { seconds: bigint; nanos: number }));
  }
  const parts: string[] = [];
  for (const f of desc.fields) {
    let v: unknown;
    if (f.oneof) {
      const o = msg[f.oneof.localName] as { case?: string; value?: unknown } | undefined;
      v = o?.case === f.localName ? o.value : undefined;
    } else {
      v = msg[f.localName];
    }
    const enc = goField(f, v);
    if (enc !== undefined) parts.push(`${goString(f.name)}:${enc}`);
  }
  return `{${parts.join(",")}}`;
}

/** A field's JSON, or undefined when Go's omitempty would leave it out. */
function goField(f: DescField, v: unknown): string | undefined {
  switch (f.fieldKind) {
    case "scalar":
      return isZeroScalar(v) && !f.oneof ? undefined : goScalar(f.scalar, v);
    case "enum":
      return v === 0 || v === undefined ? undefined : String(v);
    case "message":
      return v === undefined ? undefined : goMessage(f.message, v as Record<string, unknown>);
    case "list": {
      const items = v as unknown[];
      if (!items || items.length === 0) return undefined;
      const enc = items.map((item) =>
        f.listKind === "message"
          ? goMessage(f.message, item as Record<string, unknown>)
          : f.listKind === "enum"
            ? String(item)
            : goScalar(f.scalar, item),
      );
      return `[${enc.join(",")}]`;
    }
    case "map": {
      const m = (v ?? {}) as Record<string, unknown>;
      const keys = Object.keys(m).sort();
      if (keys.length === 0) return undefined;
      const enc = keys.map((k) => {
        const val = m[k];
        const e =
          f.mapKind === "message"
            ? goMessage(f.message, val as Record<string, unknown>)
            : f.mapKind === "enum"
              ? String(val)
              : goScalar(f.scalar, val);
        return `${goString(k)}:${e}`;
      });
      return `{${enc.join(",")}}`;
    }
  }
}

/** A decoded event message as ctr prints it. */
export function eventJson(msg: Message, registry: Registry = eventRegistry): string {
  const desc = registry.getMessage(msg.$typeName);
  if (!desc) throw new Error(`unknown message ${msg.$typeName}`);
  return goMessage(desc, msg as unknown as Record<string, unknown>);
}

function decode(env: Envelope): { msg?: Message; desc?: DescMessage; error?: string } {
  if (!env.event) return {};
  try {
    const msg = anyUnpack(env.event, eventRegistry);
    if (!msg) return {};
    return { msg, desc: eventRegistry.getMessage(msg.$typeName) };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

/** One event in ctr's layout; payloads this client cannot decode show their type URL. */
export function formatEventLine(env: Envelope): string {
  const { msg, error } = decode(env);
  let payload = "";
  if (msg) payload = eventJson(msg);
  else if (env.event) payload = error ? `${env.event.typeUrl} (${error})` : env.event.typeUrl;
  return `${goTimeString(env.timestamp)} ${env.namespace} ${env.topic} ${payload}`;
}

/** One event as a JSON object (proto JSON for the payload). */
export function formatEventJson(env: Envelope): string {
  const { msg, desc } = decode(env);
  return toJsonText({
    timestamp: env.timestamp ? rfc3339Nano(env.timestamp) : null,
    namespace: env.namespace,
    topic: env.topic,
    typeUrl: env.event?.typeUrl ?? "",
    event: msg && desc ? toJson(desc, msg) : null,
  });
}

export function registerEvents(program: Command, wire: Wire): void {
  program
    .command("events")
    .alias("event")
    .description("display the daemon's events as they happen")
    .argument("[filters...]", "filters, e.g. topic~=/namespaces/ or namespace==default")
    .option("--format <format>", "output format: text or json (one object per line)", "text")
    .action(
      wire(async (ctx, cmd) => {
        const { format } = cmd.opts<{ format?: string }>();
        const json = wantsJson(format);
        const client = await ctx.client(Events);
        const abort = new AbortController();
        const stop = () => abort.abort();
        process.once("SIGINT", stop);
        process.once("SIGTERM", stop);
        try {
          for await (const env of client.subscribe(
            { filters: cmd.args },
            ctx.stream({ signal: abort.signal }),
          )) {
            process.stdout.write(`${json ? formatEventJson(env) : formatEventLine(env)}\n`);
          }
        } catch (err) {
          if (!abort.signal.aborted) throw err;
        } finally {
          process.off("SIGINT", stop);
          process.off("SIGTERM", stop);
        }
      }),
    );
}
