// The CRI plugin's `conf_template`: a Go text/template rendered with the pod CIDR(s) that
// UpdateRuntimeConfig brings. Only the part of the template language such CNI templates use is
// implemented — field and variable references, `if`/`else if`/`else`, `range` with or without
// `$i, $v :=`, `{{-`/`-}}` trimming and comments — and anything else is an error naming it, so a
// template never renders half-understood.
import { isIP } from "node:net";

/** What containerd hands its template: the first CIDR, all of them, and a default route each. */
export interface ConfTemplateData {
  podCIDR: string;
  podCIDRRanges: string[];
  routes: string[];
}

/** The file containerd writes the rendered template to, in conf_dir. */
export const TEMPLATE_CONF_FILE = "10-containerd-net.conflist";

/** Template data for a `podCIDR` string (one CIDR or several, comma separated). */
export function templateDataFor(podCIDR: string): ConfTemplateData {
  const ranges = podCIDR
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  for (const r of ranges) if (!isCIDR(r)) throw new TemplateError(`invalid pod CIDR ${JSON.stringify(r)}`);
  // One default route per address family present, IPv4 first.
  const routes: string[] = [];
  if (ranges.some((r) => !r.includes(":"))) routes.push("0.0.0.0/0");
  if (ranges.some((r) => r.includes(":"))) routes.push("::/0");
  return { podCIDR: ranges[0] ?? "", podCIDRRanges: ranges, routes };
}

function isCIDR(s: string): boolean {
  const [ip, bits, extra] = s.split("/");
  if (extra !== undefined || !ip || !bits || !/^\d+$/.test(bits)) return false;
  const family = isIP(ip);
  return family !== 0 && Number(bits) <= (family === 4 ? 32 : 128);
}

export function renderConfTemplate(template: string, data: ConfTemplateData): string {
  const root: Record<string, unknown> = {
    PodCIDR: data.podCIDR,
    PodCIDRRanges: data.podCIDRRanges,
    Routes: data.routes,
  };
  const nodes = parse(lex(template));
  const out: string[] = [];
  execNodes(nodes, root, new Scope(undefined, { $: root }), out);
  return out.join("");
}

export class TemplateError extends Error {
  constructor(msg: string) {
    super(`conf_template: ${msg}`);
    this.name = "TemplateError";
  }
}

// ---- lexing: text and actions -------------------------------------------------------------

type Piece = { kind: "text"; text: string } | { kind: "action"; body: string; at: number };

function lex(src: string): Piece[] {
  const pieces: Piece[] = [];
  let i = 0;
  let trimNext = false;
  while (i < src.length) {
    const open = src.indexOf("{{", i);
    let text = open < 0 ? src.slice(i) : src.slice(i, open);
    if (trimNext) text = text.replace(/^\s+/, "");
    trimNext = false;
    if (open < 0) {
      if (text) pieces.push({ kind: "text", text });
      break;
    }
    let bodyStart = open + 2;
    // `{{- ` trims the whitespace before the action (the dash needs a space after it).
    if (
      src.startsWith("- ", bodyStart) ||
      src.startsWith("-\t", bodyStart) ||
      src.startsWith("-\n", bodyStart)
    ) {
      text = text.replace(/\s+$/, "");
      bodyStart += 1;
    }
    if (text) pieces.push({ kind: "text", text });
    const close = findClose(src, bodyStart);
    if (close < 0) throw new TemplateError(`unclosed action at offset ${open}`);
    let bodyEnd = close;
    if (/\s-$/.test(src.slice(bodyStart, close))) {
      bodyEnd = close - 1;
      trimNext = true;
    }
    const body = src.slice(bodyStart, bodyEnd).trim();
    if (!(body.startsWith("/*") && body.endsWith("*/"))) pieces.push({ kind: "action", body, at: open });
    i = close + 2;
  }
  return pieces;
}

/** The `}}` closing an action, skipping quoted strings. */
function findClose(src: string, from: number): number {
  let q: string | undefined;
  for (let i = from; i < src.length; i++) {
    const c = src[i]!;
    if (q) {
      if (c === "\\" && q === '"') i++;
      else if (c === q) q = undefined;
    } else if (c === '"' || c === "`") q = c;
    else if (c === "}" && src[i + 1] === "}") return i;
  }
  return -1;
}

// ---- expressions ---------------------------------------------------------------------------

type Expr =
  | { kind: "dot"; fields: string[] }
  | { kind: "var"; name: string; fields: string[] }
  | { kind: "lit"; value: unknown };

function tokenize(body: string, at: number): string[] {
  const toks: string[] = [];
  const re =
    /\s*(:=|,|"(?:[^"\\]|\\.)*"|`[^`]*`|\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*|\.(?:[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)?|[A-Za-z_][A-Za-z0-9_]*|-?\d+(?:\.\d+)?|\S)/y;
  re.lastIndex = 0;
  while (re.lastIndex < body.length) {
    const m = re.exec(body);
    if (!m || m[1] === undefined) break;
    toks.push(m[1]);
  }
  if (toks.length === 0) throw new TemplateError(`empty action at offset ${at}`);
  return toks;
}

function parseExpr(tok: string, at: number): Expr {
  if (tok === ".") return { kind: "dot", fields: [] };
  if (tok.startsWith(".")) return { kind: "dot", fields: tok.slice(1).split(".") };
  if (tok.startsWith("$")) {
    const [name, ...fields] = tok.split(".");
    return { kind: "var", name: name!, fields };
  }
  if (tok.startsWith('"')) return { kind: "lit", value: JSON.parse(tok) as string };
  if (tok.startsWith("`")) return { kind: "lit", value: tok.slice(1, -1) };
  if (/^-?\d/.test(tok)) return { kind: "lit", value: Number(tok) };
  if (tok === "true" || tok === "false") return { kind: "lit", value: tok === "true" };
  if (tok === "nil") return { kind: "lit", value: undefined };
  throw new TemplateError(
    `unsupported ${JSON.stringify(tok)} at offset ${at} (functions and pipelines are not supported)`,
  );
}

function singleExpr(toks: string[], at: number): Expr {
  if (toks.length !== 1)
    throw new TemplateError(`unsupported expression ${JSON.stringify(toks.join(" "))} at offset ${at}`);
  return parseExpr(toks[0]!, at);
}

// ---- parsing into a tree -------------------------------------------------------------------

type Node =
  | { kind: "text"; text: string }
  | { kind: "print"; expr: Expr }
  | { kind: "if"; cond: Expr; yes: Node[]; else: Node[] }
  | { kind: "range"; key?: string; value?: string; expr: Expr; body: Node[]; else: Node[] };

function parse(pieces: Piece[]): Node[] {
  let pos = 0;
  // Parses until one of the `stops` keywords; returns the nodes and the stop action's tokens.
  const block = (stops: string[]): { nodes: Node[]; stop?: string[]; at: number } => {
    const nodes: Node[] = [];
    while (pos < pieces.length) {
      const p = pieces[pos++]!;
      if (p.kind === "text") {
        nodes.push({ kind: "text", text: p.text });
        continue;
      }
      const toks = tokenize(p.body, p.at);
      const kw = toks[0]!;
      if (stops.includes(kw)) return { nodes, stop: toks, at: p.at };
      if (kw === "end" || kw === "else") throw new TemplateError(`unexpected {{${kw}}} at offset ${p.at}`);
      if (kw === "if") nodes.push(parseIf(toks.slice(1), p.at));
      else if (kw === "range") nodes.push(parseRange(toks.slice(1), p.at));
      else if (["with", "define", "template", "block", "break", "continue"].includes(kw))
        throw new TemplateError(`{{${kw}}} is not supported (offset ${p.at})`);
      else nodes.push({ kind: "print", expr: singleExpr(toks, p.at) });
    }
    if (stops.length > 0) throw new TemplateError(`missing {{end}}`);
    return { nodes, at: -1 };
  };
  const parseIf = (cond: string[], at: number): Node => {
    const then = block(["else", "end"]);
    const node: Node = { kind: "if", cond: singleExpr(cond, at), yes: then.nodes, else: [] };
    if (then.stop![0] === "else") {
      if (then.stop![1] === "if") node.else = [parseIf(then.stop!.slice(2), then.at)];
      else {
        const els = block(["end"]);
        node.else = els.nodes;
      }
    }
    return node;
  };
  const parseRange = (toks: string[], at: number): Node => {
    let key: string | undefined;
    let value: string | undefined;
    let rest = toks;
    const decl = toks.indexOf(":=");
    if (decl >= 0) {
      const vars = toks.slice(0, decl).filter((t) => t !== ",");
      if (vars.length < 1 || vars.length > 2 || vars.some((v) => !/^\$[A-Za-z0-9_]+$/.test(v)))
        throw new TemplateError(`bad range declaration at offset ${at}`);
      if (vars.length === 2) [key, value] = vars;
      else value = vars[0];
      rest = toks.slice(decl + 1);
    }
    const body = block(["else", "end"]);
    const node: Node = { kind: "range", key, value, expr: singleExpr(rest, at), body: body.nodes, else: [] };
    if (body.stop![0] === "else") node.else = block(["end"]).nodes;
    return node;
  };
  return block([]).nodes;
}

// ---- execution -----------------------------------------------------------------------------

class Scope {
  constructor(
    private parent: Scope | undefined,
    private vars: Record<string, unknown> = {},
  ) {}
  get(name: string): unknown {
    if (name in this.vars) return this.vars[name];
    if (this.parent) return this.parent.get(name);
    throw new TemplateError(`undefined variable ${name}`);
  }
  child(vars: Record<string, unknown>): Scope {
    return new Scope(this, vars);
  }
}

function field(v: unknown, name: string): unknown {
  if (v && typeof v === "object" && !Array.isArray(v) && name in v)
    return (v as Record<string, unknown>)[name];
  throw new TemplateError(`can't evaluate field ${name}`);
}

function evalExpr(e: Expr, dot: unknown, scope: Scope): unknown {
  if (e.kind === "lit") return e.value;
  let v = e.kind === "dot" ? dot : scope.get(e.name);
  for (const f of e.fields) v = field(v, f);
  return v;
}

/** Go's truth: false, 0, nil and empty strings/slices/maps are false. */
function truthy(v: unknown): boolean {
  if (Array.isArray(v)) return v.length > 0;
  if (v && typeof v === "object") return Object.keys(v).length > 0;
  return !!v;
}

/** Values print as Go's fmt prints them (slices as `[a b]`, nil as `<no value>`). */
function show(v: unknown): string {
  if (v === undefined || v === null) return "<no value>";
  if (Array.isArray(v)) return `[${v.map(show).join(" ")}]`;
  if (typeof v === "object")
    return `map[${Object.entries(v)
      .map(([k, x]) => `${k}:${show(x)}`)
      .join(" ")}]`;
  return String(v);
}

function execNodes(nodes: Node[], dot: unknown, scope: Scope, out: string[]): void {
  for (const n of nodes) {
    switch (n.kind) {
      case "text":
        out.push(n.text);
        break;
      case "print":
        out.push(show(evalExpr(n.expr, dot, scope)));
        break;
      case "if":
        execNodes(truthy(evalExpr(n.cond, dot, scope)) ? n.yes : n.else, dot, scope.child({}), out);
        break;
      case "range": {
        const v = evalExpr(n.expr, dot, scope);
        const items: [unknown, unknown][] = Array.isArray(v)
          ? v.map((x, i) => [i, x])
          : v && typeof v === "object"
            ? Object.keys(v)
                .sort()
                .map((k) => [k, (v as Record<string, unknown>)[k]])
            : v === undefined || v === null
              ? []
              : typeof v === "number"
                ? Array.from({ length: v }, (_, i) => [i, i])
                : (() => {
                    throw new TemplateError(`range can't iterate over ${show(v)}`);
                  })();
        if (items.length === 0) {
          execNodes(n.else, dot, scope.child({}), out);
          break;
        }
        for (const [k, x] of items) {
          const vars: Record<string, unknown> = {};
          if (n.key) vars[n.key] = k;
          if (n.value) vars[n.value] = x;
          execNodes(n.body, x, scope.child(vars), out);
        }
        break;
      }
    }
  }
}
