// A metadata database with an event exchange whose every event is recorded, as the store tests
// need it. `close()` stops the recorder and closes the database.
import { join } from "node:path";
import { type Envelope, Exchange } from "../../src/core/events/exchange.js";
import { MetadataDB } from "../../src/core/metadata/db.js";
import { NamespaceStore } from "../../src/core/namespaces/store.js";

export interface TestMetadata {
  db: MetadataDB;
  exchange: Exchange;
  namespaces: NamespaceStore;
  /** Every event published on `exchange`, in order. */
  events: Envelope[];
  close(): void;
}

/** Open (or create) `<root>/meta.db` with a recording exchange and the namespace store. */
export function openTestMetadata(root: string): TestMetadata {
  const db = new MetadataDB(join(root, "meta.db"));
  const exchange = new Exchange();
  const ac = new AbortController();
  const events: Envelope[] = [];
  const sub = exchange.subscribe([], ac.signal);
  (async () => {
    for await (const e of sub) events.push(e);
  })();
  return {
    db,
    exchange,
    namespaces: new NamespaceStore(db, exchange),
    events,
    close() {
      ac.abort();
      db.close();
    },
  };
}
