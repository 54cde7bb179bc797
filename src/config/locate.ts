// Finds the line of a key in TOML text, so a type error can name file, line and key. TOML
// parsers give positions only for syntax errors; this scan covers tables, dotted keys and
// quoted keys, which is what config.toml files use.

function splitKeyPath(s: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < s.length) {
    while (s[i] === " " || s[i] === "\t") i++;
    if (s[i] === '"' || s[i] === "'") {
      const q = s[i]!;
      let j = i + 1;
      let v = "";
      while (j < s.length && s[j] !== q) {
        if (q === '"' && s[j] === "\\" && j + 1 < s.length) {
          v += s[j + 1];
          j += 2;
          continue;
        }
        v += s[j];
        j++;
      }
      out.push(v);
      i = j + 1;
    } else {
      let j = i;
      while (j < s.length && s[j] !== "." && s[j] !== " " && s[j] !== "\t") j++;
      out.push(s.slice(i, j));
      i = j;
    }
    while (s[i] === " " || s[i] === "\t") i++;
    if (s[i] === ".") i++;
    else break;
  }
  return out;
}

const eq = (a: string[], b: string[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * 1-based line of `path` (full key path from the document root), or undefined. With `under`,
 * the first line setting `path` or anything below it (a table named only by its sub-tables).
 */
export function locateKey(text: string, path: string[], under = false): number | undefined {
  const hit = (key: string[]) =>
    eq(key, path) || (under && key.length > path.length && eq(key.slice(0, path.length), path));
  const lines = text.split("\n");
  let table: string[] = [];
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!.trim();
    if (line.startsWith("#") || line === "") continue;
    const header = /^\[\[?(.*?)\]\]?\s*(#.*)?$/.exec(line);
    if (header) {
      table = splitKeyPath(header[1]!);
      if (hit(table)) return n + 1;
      continue;
    }
    const eqAt = findAssign(line);
    if (eqAt < 0) continue;
    const key = [...table, ...splitKeyPath(line.slice(0, eqAt))];
    if (hit(key)) return n + 1;
    // a nested key inside an inline table is reported at the line that opens it
    if (path.length > key.length && eq(key, path.slice(0, key.length))) return n + 1;
  }
  return undefined;
}

function findAssign(line: string): number {
  let q: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (q) {
      if (c === q) q = undefined;
    } else if (c === '"' || c === "'") q = c;
    else if (c === "=") return i;
  }
  return -1;
}

/**
 * The key a line sets (or the table it opens), for naming the key of a syntax error: the table
 * headers above it give the prefix. Undefined for a blank or comment line.
 */
export function keyAtLine(text: string, lineNo: number): string[] | undefined {
  const lines = text.split("\n");
  let table: string[] = [];
  for (let n = 0; n < lines.length && n < lineNo; n++) {
    const line = lines[n]!.trim();
    const at = n === lineNo - 1;
    if (line.startsWith("#") || line === "") {
      if (at) return undefined;
      continue;
    }
    const header = /^\[\[?(.*?)\]\]?\s*(#.*)?$/.exec(line) ?? (at ? /^\[\[?([^\]]*)/.exec(line) : null);
    if (header) {
      table = splitKeyPath(header[1]!);
      if (at) return table;
      continue;
    }
    if (!at) continue;
    const eqAt = findAssign(line);
    const key = splitKeyPath(eqAt < 0 ? line : line.slice(0, eqAt)).filter((k) => k !== "");
    return [...table, ...key];
  }
  return undefined;
}
