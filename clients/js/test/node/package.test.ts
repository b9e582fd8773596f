// What `npm install herald-client` gives: both module formats, types, no runtime dependencies.
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { describe, expect, it } from "vitest";

const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as Record<string, unknown>;
const dist = (f: string) => new URL(`../../dist/${f}`, import.meta.url);

describe("the package", () => {
  it("has no runtime dependencies", () => {
    expect(pkg.dependencies ?? {}).toEqual({});
  });

  it("loads as ESM and as CommonJS, with type declarations", async () => {
    const esm = (await import(dist("index.js").href)) as Record<string, unknown>;
    const cjs = createRequire(import.meta.url)(dist("index.cjs").pathname) as Record<string, unknown>;
    for (const mod of [esm, cjs]) {
      expect(typeof mod.Herald).toBe("function");
      expect(typeof mod.HeraldError).toBe("function");
      expect(mod.CLOSE_CODES).toContain(4004);
    }
    expect(existsSync(dist("index.d.ts"))).toBe(true);
    expect(readFileSync(dist("client.d.ts"), "utf8")).toContain("getToken?: () => string | Promise<string>;");
  });
});
