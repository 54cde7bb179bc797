// Records kept encoded: the containers and images tables have a `wire` column holding each
// record as field 1 of an answer (its tag, its length, then containerd's message; the service
// layer writes it, see services/container-wire.ts and image-wire.ts). Get and List answers carry
// their records as field 1, so a list's whole body is the items of its rows one after the
// other, and SQLite can join them itself: a few reads of a few buffers instead of a row and a
// Buffer per record (docs/performance.md, finding 72).
import type Database from "better-sqlite3";
import type { MetadataDB } from "./db.js";

/**
 * About how many bytes each joined part holds. One buffer for a whole list of 5,000 containers
 * (15 MB) was slower than reading row by row: buffers that size are above glibc's mmap threshold
 * (bin/berthd.js), so SQLite's and the answer's buffers were pages touched for the first time,
 * at every call (finding 65). Parts this size come from memory malloc keeps and reuses.
 */
const PART_BYTES = 256 << 10;
/** Rows joined into the first part, before their size is known. */
const FIRST_ROWS = 64;

/**
 * Reads every `wire` item of a namespace's rows of `table` in `key` order, joined into parts of
 * about PART_BYTES each, in order (none when there are no rows); null when a row has no item,
 * for the caller to build the answer from decoded records instead. The parts are read one after
 * the other in one synchronous call, so no write comes between them.
 *
 * Each part's rows are ordered in a subquery and joined by the aggregate outside it: SQLite does
 * not fold a subquery's ORDER BY into an aggregate query (it runs the subquery as a coroutine
 * that hands the rows over in order), and an ORDER BY inside group_concat sorted every item in a
 * temporary b-tree, ten times slower. group_concat takes a blob's bytes as they are in a UTF-8
 * database (ours; the lengths are compared all the same) and the CAST gives them back as a blob.
 * A part's last key (max) is where the next one starts.
 */
export function keptItemsReader(db: MetadataDB, table: string, key: string): (ns: string) => Buffer[] | null {
  const joined = (after: string) =>
    db.sql
      .prepare(
        `SELECT CAST(group_concat(wire, '') AS BLOB), count(*), count(wire), total(length(wire)), max(${key})
           FROM (SELECT ${key}, wire FROM ${table} WHERE namespace = ?${after} ORDER BY ${key} LIMIT ?)`,
      )
      .raw(true);
  const first = joined("");
  const next = joined(` AND ${key} > ?`);
  type Part = [items: Buffer | null, rows: number, kept: number, bytes: number, last: string | null];
  return (ns) => {
    const parts: Buffer[] = [];
    let rows = FIRST_ROWS;
    let part = first.get(ns, rows) as Part;
    for (;;) {
      const [items, n, kept, bytes, last] = part;
      if (kept < n) return null;
      if (n === 0) return parts;
      if (items?.length !== bytes)
        throw new Error(`${table}: joined ${items?.length ?? 0} bytes of kept records, they hold ${bytes}`);
      parts.push(items);
      if (n < rows) return parts;
      // as many rows as fill a part at this part's bytes per row
      rows = Math.max(1, Math.floor(PART_BYTES / (bytes / n)));
      part = next.get(ns, last, rows) as Part;
    }
  };
}

/**
 * Encodes, in one transaction, the rows of `table` that have no item (written before the column
 * existed, or by a store given no encoder). `withoutWire` selects them as [namespace, ...row] in
 * raw mode, the row's first column being its `key`; `itemOf` makes a row's item.
 */
export function encodeMissingItems<R extends unknown[]>(
  db: MetadataDB,
  table: string,
  key: string,
  withoutWire: Database.Statement,
  itemOf: (row: R) => Uint8Array,
): void {
  // read whole first: better-sqlite3 runs no other statement while one is being iterated
  const rows = withoutWire.all() as [string, ...R][];
  if (rows.length === 0) return;
  const setWire = db.stmt(`UPDATE ${table} SET wire = ? WHERE namespace = ? AND ${key} = ?`);
  db.tx(
    () => {
      for (const [ns, ...r] of rows) setWire.run(itemOf(r as unknown as R), ns, r[0]);
    },
    { what: `the ${table} table's kept records` },
  );
}
