// berth-publish: what berthd hands shims as -publish-binary. Invoked as
//   berth-publish --address <ttrpc socket> publish --topic T --namespace NS
// with a protobuf Any (the event) on stdin; forwards it to berthd's ttrpc Events/Forward.
import { fromBinary } from "@bufbuild/protobuf";
import { AnySchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Events } from "../../gen/containerd/services/ttrpc/events/v1/events_pb.js";
import { TtrpcClient } from "../../ttrpc/index.js";

function flag(args: string[], name: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === `--${name}` || a === `-${name}`) return args[i + 1];
    if (a.startsWith(`--${name}=`)) return a.slice(name.length + 3);
  }
  return undefined;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (!args.includes("publish"))
    throw new Error("usage: berth-publish --address ADDR publish --topic T --namespace NS");
  const address = flag(args, "address") ?? process.env.TTRPC_ADDRESS;
  const topic = flag(args, "topic");
  const namespace = flag(args, "namespace");
  if (!address || !topic || !namespace) throw new Error("--address, --topic and --namespace are required");
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  const event = fromBinary(AnySchema, Buffer.concat(chunks));
  const client = await TtrpcClient.connect(address);
  try {
    await client
      .service(Events)
      .forward(
        { envelope: { timestamp: timestampFromDate(new Date()), namespace, topic, event } },
        { timeoutMs: 10_000 },
      );
  } finally {
    client.close();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`berth-publish: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
