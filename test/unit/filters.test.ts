import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BerthError } from "../../src/base/errdefs.js";
import { type Adaptor, labelAdaptor, parseFilter, parseFilters } from "../../src/core/filters.js";

interface Item {
  id: string;
  name?: string;
  kind?: string;
  labels?: Record<string, string>;
}

const items: Item[] = [
  { id: "a", name: "alpine", kind: "image", labels: { env: "prod", "io.example/tier": "web" } },
  { id: "b", name: "busybox", kind: "image", labels: { env: "dev" } },
  { id: "c", name: "ctr-1", kind: "container", labels: { "app name": "x, y", 'quote"d': "q" } },
  { id: "d", name: "débian", kind: "image" },
  { id: "e", kind: "container", labels: { env: "" } },
  { id: "f", name: "alpine", kind: "container", labels: { "a.b.c": "dots", "tab\tkey": "t" } },
];

const adapt =
  (it: Item): Adaptor =>
  (fp) => {
    switch (fp[0]) {
      case "id":
        return it.id;
      case "name":
        return it.name;
      case "kind":
        return it.kind;
      case "labels":
        return labelAdaptor(it.labels ?? {}, fp.slice(1));
      default:
        return undefined;
    }
  };

function ids(filters: string | string[]): string {
  const f = Array.isArray(filters) ? parseFilters(filters) : parseFilter(filters);
  return items
    .filter((it) => f.match(adapt(it)))
    .map((it) => it.id)
    .join("");
}

describe("filters: matching", () => {
  it("empty filter and empty list match everything", () => {
    assert.equal(ids(""), "abcdef");
    assert.equal(ids([]), "abcdef");
    assert.equal(ids(["", ""]), "abcdef");
    assert.equal(ids(["name==nope", ""]), "abcdef");
  });

  it("presence", () => {
    assert.equal(ids("name"), "abcdf");
    assert.equal(ids("labels.env"), "abe"); // present with an empty value still counts
    assert.equal(ids("nosuchfield"), "");
    assert.equal(ids("labels"), ""); // the adaptor finds no label named ""
  });

  it("== and !=", () => {
    assert.equal(ids("name==alpine"), "af");
    assert.equal(ids("kind==container"), "cef");
    assert.equal(ids("name!=alpine"), "bcde"); // absent name reads as "" and is != alpine
    assert.equal(ids('labels.env==""'), "e");
    assert.equal(ids('labels.env!=""'), "ab");
    assert.equal(ids("name==débian"), "d");
    assert.equal(ids("name==ctr-1"), "c"); // punctuation in bare values
  });

  it("bare values may contain dots and punctuation", () => {
    const f = parseFilter("v==omg_a.b-c:d/e@f");
    assert.equal(
      f.match(() => "omg_a.b-c:d/e@f"),
      true,
    );
  });

  it("~= regular expressions, bare and quoted", () => {
    assert.equal(ids("name~=^a"), "af");
    assert.equal(ids("name~=box"), "b"); // unanchored search
    assert.equal(ids("name~=/^[ab]/"), "abf");
    assert.equal(ids("name~=|^c.+-[0-9]$|"), "c");
    assert.equal(ids("name~=|a/b|"), "");
    assert.equal(ids('name~="^(alpine|busybox)$"'), "abf");
    assert.equal(ids("name~=/x{0,1}ine/"), "af"); // comma inside a quoted regexp
    assert.equal(ids("name~=\\d"), "c"); // backslash classes as bare values
    assert.equal(ids("labels.env~=^$"), "cdef"); // absent reads as ""
    assert.equal(ids("name~=(?i)ALPINE"), "af"); // RE2 inline flags
    assert.equal(ids("name~=\\Aalp"), "af");
    assert.equal(ids("name~=(?P<x>box)"), "b");
    assert.equal(ids("name~=/a\\/b/"), "");
  });

  it("a regexp that does not compile matches nothing", () => {
    assert.equal(ids("name~=[unclosed"), "");
    assert.equal(ids(["name~=[unclosed", "id==b"]), "b");
  });

  it("quoted fieldpath components (label keys with dots, spaces, escapes)", () => {
    assert.equal(ids('labels."io.example/tier"==web'), "a");
    assert.equal(ids('labels."app name"=="x, y"'), "c");
    assert.equal(ids('labels."quote\\"d"==q'), "c");
    assert.equal(ids('labels."tab\\tkey"'), "f");
    assert.equal(ids('labels."tab\\x09key"'), "f");
    assert.equal(ids('labels."tab\\011key"'), "f");
    assert.equal(ids('labels."\\u0074ab\\U00000009key"'), "f");
    // components are joined with "." by the label adaptor
    assert.equal(ids("labels.a.b.c==dots"), "f");
    assert.equal(ids('labels."a.b".c'), "f");
    assert.equal(ids('"name"==busybox'), "b");
  });

  it("\\U escapes past 0x7fffffff wrap to U+FFFD instead of failing, as in containerd", () => {
    assert.equal(
      parseFilter('x=="\\UFFFFFFFF"').match(() => "\ufffd"),
      true,
    );
  });

  it("non-ASCII through escapes decodes as UTF-8", () => {
    assert.equal(ids('name=="d\\xc3\\xa9bian"'), "d");
    assert.equal(ids('name=="d\\u00e9bian"'), "d");
    assert.equal(ids('name=="d\\303\\251bian"'), "d");
  });

  it("AND within one filter string", () => {
    assert.equal(ids("kind==image,labels.env"), "ab");
    assert.equal(ids("kind==image,labels.env,labels.env!=dev"), "a");
    assert.equal(ids("name==alpine,kind==container"), "f");
    assert.equal(ids("name==alpine,kind==nope"), "");
  });

  it("OR across filter strings", () => {
    assert.equal(ids(["name==busybox", "kind==container"]), "bcef");
    assert.equal(ids(["name==busybox,kind==container", "id==d"]), "d");
    assert.equal(ids(["id==a", "id==b", "id==f"]), "abf");
  });

  it("whitespace before tokens is skipped (after a value it is an error, as in containerd)", () => {
    assert.equal(ids(" name == alpine,  kind==container"), "f");
    assert.equal(ids("name ==alpine"), "af");
  });

  it("labelAdaptor", () => {
    assert.equal(labelAdaptor({ "a.b": "1" }, ["a", "b"]), "1");
    assert.equal(labelAdaptor({ a: "" }, ["a"]), "");
    assert.equal(labelAdaptor({}, ["a"]), undefined);
    assert.equal(labelAdaptor({ a: "1" }, ["constructor"]), undefined);
    assert.equal(labelAdaptor(undefined, ["a"]), undefined);
  });
});

describe("filters: syntax errors", () => {
  const cases: [input: string, message: string][] = [
    // expected field or quoted
    ["name==foo,", "[name==foo,]: expected field or quoted"],
    ["labels.", "[labels.]: expected field or quoted"],
    ["labels.?x", "[labels. >|?|< x]: expected field or quoted"],
    ["-name", "[ >|-|< name]: expected field or quoted"],
    [" ", "[ ]: expected field or quoted"],
    [",name", "[ >|,|< name]: expected field or quoted"],
    ["a..b", "[a. >|.|< b]: expected field or quoted"],
    // quotes not allowed where they are
    ["labels.|foo|==x", "[labels. >|||< foo|==x]: invalid quote encountered"],
    ["labels./foo/", "[labels. >|/|< foo/]: invalid quote encountered"],
    ["name==/foo/", "[name== >|/|< foo/]: invalid quote encountered"],
    ["name!=|foo|", "[name!= >|||< foo|]: invalid quote encountered"],
    // quoted literal problems
    ["labels.ns/key==value", "[labels.ns >|/|< key==value]: quoted literal not terminated"],
    ["labels.key==/value", "[labels.key== >|/|< value]: quoted literal not terminated"],
    ['name=="abc', '[name== >|"|< abc]: quoted literal not terminated'],
    ['labels."a\nb"', '[labels. >|"|< a\nb"]: quoted literal not terminated'],
    ['labels."\\g"', '[labels. >|"|< \\g"]: illegal escape sequence'],
    ['name~=|\\"|', '[name~= >|||< \\"|]: illegal escape sequence'],
    ['labels."\\xaz"', '[labels. >|"|< \\xaz"]: illegal numeric escape sequence'],
    ['labels."\\u12"', '[labels. >|"|< \\u12"]: illegal numeric escape sequence'],
    ['labels."\\18"', '[labels. >|"|< \\18"]: illegal numeric escape sequence'],
    ['labels."\\777"', '[labels. >|"|< \\777"]: unquoting failed: quote syntax error'],
    ['name=="\\U00110000"', '[name== >|"|< \\U00110000"]: unquoting failed: quote syntax error'],
    // characters that are never allowed
    ["foo\0bar", "[foo >|\0|< bar]: unexpected null"],
    ["foo\ud800", "[foo >|\ud800|< ]: rune error"],
    ["name==a\0", "[name==a >|\0|< ]: unexpected input: \ufffd"],
    // operators
    ["name=foo", '[name >|=|< foo]: unsupported operator "="'],
    ["name===foo", '[name >|=|< ==foo]: unsupported operator "==="'],
    ["name!~foo", '[name >|!|< ~foo]: unsupported operator "!~"'],
    ["name foo", '[name  >|f|< oo]: expected an operator ("=="|"!="|"~=")'],
    ["name ", '[name ]: expected an operator ("=="|"!="|"~=")'],
    ['name"x"', '[name >|"|< x"]: expected an operator ("=="|"!="|"~=")'],
    // values
    ["name==", "[name==]: expected value or quoted"],
    ["image~=,id==x", "[image~= >|,|< id==x]: expected value or quoted"],
    ["name==.x", "[name== >|.|< x]: expected value or quoted"],
    // trailing input after a selector
    ["name==foo bar", "[name==foo >| |< bar]: unexpected input:  "],
    ["name==foo ", "[name==foo >| |< ]: unexpected input:  "],
    ['name=="foo"bar', '[name=="foo" >|b|< ar]: unexpected input: b'],
    ['name=="foo".x', '[name=="foo" >|.|< x]: unexpected input: .'],
  ];

  for (const [input, message] of cases) {
    it(JSON.stringify(input), () => {
      assert.throws(
        () => parseFilter(input),
        (err: unknown) => {
          assert.ok(err instanceof BerthError, `not a BerthError: ${err}`);
          assert.equal(err.kind, "invalid argument");
          assert.equal(err.message, `filters: parse error: ${message}: invalid argument`);
          return true;
        },
      );
    });
  }

  it("parseFilters fails if any filter string is invalid", () => {
    assert.throws(
      () => parseFilters(["name==ok", "name=="]),
      (err: unknown) => err instanceof BerthError && err.kind === "invalid argument",
    );
  });
});
