// docs/configuration.md is generated from the code (scripts/gen-config-docs.ts); this fails when
// the checked-in file no longer matches, and says how to regenerate it.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { CONFIG_DOC, renderConfigDocs } from "../../scripts/gen-config-docs.js";
import { defaultConfig, printConfig } from "../../src/config/config.js";
import { allPlugins, pluginDefaults } from "../../src/plugins/all.js";
import { repoRoot } from "../helpers/daemons.js";

describe("configuration reference", () => {
  const generated = renderConfigDocs();

  it("docs/configuration.md matches the code", () => {
    assert.equal(CONFIG_DOC, join(repoRoot, "docs/configuration.md"));
    const current = readFileSync(CONFIG_DOC, "utf8");
    if (current !== generated)
      assert.fail(
        "docs/configuration.md is out of date with the config defaults or live keys: regenerate it with " +
          "`make build && node dist/scripts/gen-config-docs.js` and commit the result",
      );
  });

  it("lists every key `berthd config default` prints, with its section and liveness", () => {
    const toml = printConfig(defaultConfig(pluginDefaults(allPlugins())));
    let section = "Top level";
    const sectionsOf = new Map<string, string>();
    for (const l of generated.split("\n")) {
      const h = /^## (?:`\[(.+)\]`|Top level)$/.exec(l);
      if (h) section = h[1] ?? "Top level";
      const row = /^\| `([^`]+)` \| [^|]+ \| .* \| (yes|restart) \|$/.exec(l);
      if (row) sectionsOf.set(`${section} ${row[1]}`, row[2]!);
    }
    section = "Top level";
    let keys = 0;
    for (const l of toml.split("\n")) {
      const h = /^\[(.+)\]$/.exec(l);
      if (h) {
        section = h[1]!;
        continue;
      }
      const kv = /^("[^"]+"|[A-Za-z0-9_-]+) = /.exec(l);
      if (!kv) continue;
      keys++;
      assert.ok(sectionsOf.has(`${section} ${kv[1]}`), `${section} ${kv[1]} is documented`);
    }
    assert.ok(keys > 100, `${keys} keys`);
    assert.equal(sectionsOf.get("Top level root"), "restart");
    assert.equal(sectionsOf.get('plugins."io.containerd.grpc.v1.cri" sandbox_image'), "yes");
    assert.equal(sectionsOf.get('plugins."io.containerd.grpc.v1.cri".cni conf_dir'), "yes");
    assert.equal(sectionsOf.get('plugins."io.containerd.grpc.v1.cri".cni bin_dir'), "restart");
    assert.equal(sectionsOf.get("debug level"), "yes");
  });
});
