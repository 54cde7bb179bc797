// containerd's filter language, used by List/Subscribe calls across the API.
//
//   filters   := one or more filter strings, ORed (an empty list, or an empty string, matches all)
//   filter    := selector ("," selector)*                       all selectors must match
//   selector  := fieldpath [ operator value ]                   no operator: the field is present
//   fieldpath := field ("." field)*
//   field     := [A-Za-z0-9_]+ | "double-quoted"
//   operator  := "==" | "!=" | "~="                             "~=" takes a regular expression
//   value     := bare word (no spaces or commas) | "double-quoted"
//                | /regexp/ | |regexp|                          the last two only after "~="
//
// Quoted strings take Go-style escapes (\n \t \xNN \uNNNN \NNN octal, \\ and the quote itself).
// Syntax errors are InvalidArgument errors whose message marks the offending position the way
// containerd does: `filters: parse error: [before >|x|< after]: reason`.
//
// Matching follows containerd: `==` needs the field present and equal; `!=` compares the value
// (an absent field reads as ""); `~=` searches the value (absent reads as "") with the regular
// expression; an expression that does not compile matches nothing.

import { errInvalidArgument } from "../base/errdefs.js";

/** Maps a field path to the field's value; `undefined` means the field is absent. */
export type Adaptor = (fieldpath: string[]) => string | undefined;

export interface Filter {
  match(a: Adaptor): boolean;
}

/** A filter that matches everything. */
export const always: Filter = { match: () => true };

/** Looks up a label by the rest of a field path after "labels" (components joined by "."). */
export function labelAdaptor(labels: Record<string, string> | undefined, rest: string[]): string | undefined {
  if (!labels) return undefined;
  const key = rest.join(".");
  return Object.hasOwn(labels, key) ? labels[key] : undefined;
}

/** Parses one filter string (comma-separated selectors, ANDed). "" matches everything. */
export function parseFilter(s: string): Filter {
  if (s === "") return always;
  return new Parser(s).parse();
}

/** Parses several filter strings and ORs them. No strings at all matches everything. */
export function parseFilters(fs: readonly string[]): Filter {
  if (fs.length === 0) return always;
  const parsed = fs.map(parseFilter);
  if (parsed.includes(always)) return always;
  if (parsed.length === 1) return parsed[0]!;
  return { match: (a) => parsed.some((f) => f.match(a)) };
}

// ---------------------------------------------------------------------------------------------
// Scanner

const EOF = -1;
const ILLEGAL = -2;

type TokenKind = "eof" | "illegal" | "quoted" | "separator" | "operator" | "value" | "field" | "other";

interface Token {
  kind: TokenKind;
  /** Index of the token's first character in the input. */
  pos: number;
  text: string;
}

const spaceRe = /\s/u;
const valueRuneRe = /[\p{L}\p{M}\p{N}\p{P}\p{S}]/u;

function isSpace(cp: number): boolean {
  // Go's unicode.IsSpace: JS's \s plus U+0085, minus U+FEFF.
  if (cp === 0x85) return true;
  if (cp === 0xfeff) return false;
  return spaceRe.test(String.fromCodePoint(cp));
}

const isFieldRune = (cp: number) =>
  cp === 0x5f || (cp >= 0x30 && cp <= 0x39) || (cp >= 0x41 && cp <= 0x5a) || (cp >= 0x61 && cp <= 0x7a);
const isOperatorRune = (cp: number) => cp === 0x3d || cp === 0x21 || cp === 0x7e; // = ! ~
const isQuoteRune = (cp: number) => cp === 0x22 || cp === 0x2f || cp === 0x7c; // " / |
const isSeparatorRune = (cp: number) => cp === 0x2c || cp === 0x2e; // , .
const isValueRune = (cp: number) =>
  cp >= 0 && cp !== 0x2c && !isSpace(cp) && valueRuneRe.test(String.fromCodePoint(cp));

function hexVal(cp: number): number {
  if (cp >= 0x30 && cp <= 0x39) return cp - 0x30;
  if (cp >= 0x61 && cp <= 0x66) return cp - 0x61 + 10;
  if (cp >= 0x41 && cp <= 0x46) return cp - 0x41 + 10;
  return 16;
}

class Scanner {
  /** Start of the character read last. */
  pos = 0;
  /** Index just past the character read last. */
  end = 0;
  /** Inside a value (after an operator, until the value or a separator). */
  private inValue = false;
  /** The first error met; later ones do not replace it. */
  err = "";

  constructor(readonly input: string) {}

  private fail(msg: string): void {
    if (this.err === "") this.err = msg;
  }

  next(): number {
    if (this.end >= this.input.length) {
      this.pos = this.input.length;
      return EOF;
    }
    this.pos = this.end;
    const cp = this.input.codePointAt(this.end)!;
    this.end += cp > 0xffff ? 2 : 1;
    if (cp === 0xfffd || (cp >= 0xd800 && cp <= 0xdfff)) {
      this.fail("rune error");
      return ILLEGAL;
    }
    if (cp === 0) {
      this.fail("unexpected null");
      return ILLEGAL;
    }
    return cp;
  }

  peek(): number {
    const { pos, end } = this;
    const cp = this.next();
    this.pos = pos;
    this.end = end;
    return cp;
  }

  scan(): Token {
    let cp = this.next();
    while (cp >= 0 && isSpace(cp)) cp = this.next();
    const pos = this.pos;
    const tok = (kind: TokenKind): Token => ({ kind, pos, text: this.input.slice(pos, this.end) });
    if (cp === EOF) return { kind: "eof", pos, text: "" };
    if (cp === ILLEGAL) return { kind: "illegal", pos, text: "" };
    if (isQuoteRune(cp)) return tok(this.scanQuoted(cp) ? "quoted" : "illegal");
    if (isSeparatorRune(cp)) {
      this.inValue = false;
      return tok("separator");
    }
    if (isOperatorRune(cp)) {
      while (isOperatorRune(this.peek())) this.next();
      this.inValue = true;
      return tok("operator");
    }
    if (this.inValue) {
      while (isValueRune(this.peek())) this.next();
      this.inValue = false;
      return tok("value");
    }
    if (isFieldRune(cp)) {
      while (isFieldRune(this.peek())) this.next();
      return tok("field");
    }
    return { kind: "other", pos, text: String.fromCodePoint(cp) };
  }

  /** Consumes a quoted literal whose opening quote was just read; false if it is malformed. */
  private scanQuoted(quote: number): boolean {
    let ok = true;
    let cp = this.next();
    while (cp !== quote) {
      if (cp < 0 || cp === 0x0a) {
        this.fail("quoted literal not terminated");
        return false;
      }
      if (cp === 0x5c) {
        const [after, legal] = this.scanEscape(quote);
        cp = after;
        if (!legal) ok = false;
      } else {
        cp = this.next();
      }
    }
    return ok;
  }

  /** Consumes an escape after its backslash; returns the character after it and whether it was legal. */
  private scanEscape(quote: number): [number, boolean] {
    const cp = this.next();
    if (cp >= 0 && (cp === quote || "abfnrtv\\".includes(String.fromCodePoint(cp))))
      return [this.next(), true];
    if (cp >= 0x30 && cp <= 0x37) return this.scanDigits(cp, 8, 3);
    if (cp === 0x78) return this.scanDigits(this.next(), 16, 2); // x
    if (cp === 0x75) return this.scanDigits(this.next(), 16, 4); // u
    if (cp === 0x55) return this.scanDigits(this.next(), 16, 8); // U
    this.fail("illegal escape sequence");
    return [cp, false];
  }

  private scanDigits(first: number, base: number, count: number): [number, boolean] {
    let cp = first;
    let n = count;
    while (n > 0 && hexVal(cp) < base) {
      cp = this.next();
      n--;
    }
    if (n > 0) {
      this.fail("illegal numeric escape sequence");
      return [cp, false];
    }
    return [cp, true];
  }
}

// ---------------------------------------------------------------------------------------------
// Unquoting (Go string-literal escapes; "/" and "|" behave like the double quote)

class QuoteSyntaxError extends Error {}

function pushUtf8(out: number[], cp: number): void {
  const c = cp >= 0xd800 && cp <= 0xdfff ? 0xfffd : cp;
  for (const b of Buffer.from(String.fromCodePoint(c), "utf8")) out.push(b);
}

const simpleEscapes: Record<string, number> = { a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11, "\\": 0x5c };

function unquote(s: string): string {
  const quote = s[0];
  if (s.length < 2 || quote !== s[s.length - 1] || !`"/|`.includes(quote!)) throw new QuoteSyntaxError();
  const body = s.slice(1, -1);
  if (!body.includes("\\") && !body.includes(quote!)) {
    if (body.includes("\n")) throw new QuoteSyntaxError();
    return body;
  }
  const bytes: number[] = [];
  const chars = Array.from(body);
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === quote || c === "\n") throw new QuoteSyntaxError();
    if (c !== "\\") {
      pushUtf8(bytes, c.codePointAt(0)!);
      continue;
    }
    const e = chars[++i];
    if (e === undefined) throw new QuoteSyntaxError();
    if (e in simpleEscapes) {
      bytes.push(simpleEscapes[e]!);
    } else if (e === "x" || e === "u" || e === "U") {
      const n = e === "x" ? 2 : e === "u" ? 4 : 8;
      const digits = chars.slice(i + 1, i + 1 + n);
      if (digits.length < n || digits.some((d) => hexVal(d.codePointAt(0)!) >= 16))
        throw new QuoteSyntaxError();
      // Read as a signed 32-bit value, as containerd does: \U80000000 and above wrap negative and
      // decode to U+FFFD instead of failing.
      const v = Number.parseInt(digits.join(""), 16) | 0;
      i += n;
      if (e === "x") bytes.push(v);
      else if (v > 0x10ffff) throw new QuoteSyntaxError();
      else pushUtf8(bytes, v < 0 ? 0xfffd : v);
    } else if (e >= "0" && e <= "7") {
      const digits = chars.slice(i, i + 3);
      if (digits.length < 3 || digits.some((d) => d < "0" || d > "7")) throw new QuoteSyntaxError();
      const v = Number.parseInt(digits.join(""), 8);
      if (v > 255) throw new QuoteSyntaxError();
      bytes.push(v);
      i += 2;
    } else if (e === quote) {
      bytes.push(e.charCodeAt(0));
    } else {
      throw new QuoteSyntaxError();
    }
  }
  return Buffer.from(bytes).toString("utf8");
}

// ---------------------------------------------------------------------------------------------
// Regular expressions: containerd uses Go's RE2 syntax; translate the common differences.

function compileRegexp(src: string): RegExp | undefined {
  let flags = "";
  let body = src;
  const lead = /^\(\?([imsU]+)\)/.exec(body);
  if (lead) {
    if (lead[1]!.includes("U")) return undefined; // ungreedy mode has no JS equivalent
    flags = [...new Set(lead[1])].join("");
    body = body.slice(lead[0].length);
  }
  let out = "";
  for (let i = 0; i < body.length; i++) {
    const c = body[i]!;
    if (c === "\\" && i + 1 < body.length) {
      const e = body[++i]!;
      if (e === "A") out += "(?<![\\s\\S])";
      else if (e === "z") out += "(?![\\s\\S])";
      else out += c + e;
    } else if (body.startsWith("(?P<", i)) {
      out += "(?<";
      i += 3;
    } else {
      out += c;
    }
  }
  for (const f of [flags + "u", flags]) {
    try {
      return new RegExp(out, f);
    } catch {
      // try the next flag set
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Parser

type Op = "present" | "==" | "!=" | "~=";

interface Selector {
  fieldpath: string[];
  op: Op;
  value: string;
  re?: RegExp;
}

function matchSelector(sel: Selector, a: Adaptor): boolean {
  const v = a(sel.fieldpath);
  switch (sel.op) {
    case "present":
      return v !== undefined;
    case "==":
      return v !== undefined && v === sel.value;
    case "!=":
      return (v ?? "") !== sel.value;
    case "~=":
      if (!sel.re) return false;
      return sel.re.test(v ?? "");
  }
}

class Parser {
  private readonly sc: Scanner;

  constructor(private readonly input: string) {
    this.sc = new Scanner(input);
  }

  parse(): Filter {
    const sels = [this.selector()];
    for (;;) {
      const cp = this.sc.peek();
      if (cp === EOF) break;
      if (cp !== 0x2c) {
        const shown = cp < 0 ? "\ufffd" : String.fromCodePoint(cp);
        throw this.error(this.sc.end, `unexpected input: ${shown}`);
      }
      this.sc.scan(); // the comma
      sels.push(this.selector());
    }
    return { match: (a) => sels.every((s) => matchSelector(s, a)) };
  }

  private selector(): Selector {
    const fieldpath = this.fieldpath();
    const cp = this.sc.peek();
    if (cp === 0x2c || cp === EOF) return { fieldpath, op: "present", value: "" };
    const op = this.operator();
    const value = this.value(op === "~=");
    const sel: Selector = { fieldpath, op, value };
    if (op === "~=") sel.re = compileRegexp(value);
    return sel;
  }

  private fieldpath(): string[] {
    const path = [this.field()];
    while (this.sc.peek() === 0x2e) {
      this.sc.scan(); // the dot
      path.push(this.field());
    }
    return path;
  }

  private field(): string {
    const t = this.sc.scan();
    switch (t.kind) {
      case "field":
        return t.text;
      case "quoted":
        return this.unquote(t, false);
      case "illegal":
        throw this.error(t.pos, this.sc.err);
      default:
        throw this.error(t.pos, "expected field or quoted");
    }
  }

  private operator(): Op {
    const t = this.sc.scan();
    if (t.kind === "operator") {
      if (t.text === "==" || t.text === "!=" || t.text === "~=") return t.text;
      throw this.error(t.pos, `unsupported operator "${t.text}"`);
    }
    if (t.kind === "illegal") throw this.error(t.pos, this.sc.err);
    throw this.error(t.pos, 'expected an operator ("=="|"!="|"~=")');
  }

  private value(allowRegexpQuotes: boolean): string {
    const t = this.sc.scan();
    switch (t.kind) {
      case "value":
      case "field":
        return t.text;
      case "quoted":
        return this.unquote(t, allowRegexpQuotes);
      case "illegal":
        throw this.error(t.pos, this.sc.err);
      default:
        throw this.error(t.pos, "expected value or quoted");
    }
  }

  private unquote(t: Token, allowRegexpQuotes: boolean): string {
    if (!allowRegexpQuotes && t.text[0] !== '"') throw this.error(t.pos, "invalid quote encountered");
    try {
      return unquote(t.text);
    } catch (err) {
      if (err instanceof QuoteSyntaxError) throw this.error(t.pos, "unquoting failed: quote syntax error");
      throw err;
    }
  }

  /** Marks the character at `pos` (containerd marks one byte, which splits multi-byte characters). */
  private error(pos: number, reason: string): Error {
    const s = this.input;
    let where: string;
    if (pos < s.length) {
      const cp = s.codePointAt(pos)!;
      const after = pos + (cp > 0xffff ? 2 : 1);
      where = `[${s.slice(0, pos)} >|${s.slice(pos, after)}|< ${s.slice(after)}]`;
    } else {
      where = `[${s}]`;
    }
    return errInvalidArgument(`filters: parse error: ${where}: ${reason}`);
  }
}

/** A List's filters parsed, a syntax error wrapped once more as containerd's stores do. */
export function parseListFilters(filters: readonly string[]): Filter {
  try {
    return parseFilters([...filters]);
  } catch (err) {
    throw errInvalidArgument((err as Error).message);
  }
}

/**
 * What a store's List does with filters: parse them (a syntax error is InvalidArgument, wrapped
 * once more as containerd's stores do) and keep the items that match.
 */
export function selectMatching<T>(
  filters: readonly string[],
  items: Iterable<T>,
  adapt: (item: T) => Adaptor,
): T[] {
  const filter = parseListFilters(filters);
  const out: T[] = [];
  for (const item of items) if (filter.match(adapt(item))) out.push(item);
  return out;
}
