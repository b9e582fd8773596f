// The committed generated files are what a fresh run of their generators gives.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
// @ts-expect-error: plain ESM scripts without declarations
import { browserBundle, committedBundle } from "../../scripts/build.mjs";
// @ts-expect-error: plain ESM scripts without declarations
import { generate, outputPath, schemaPath } from "../../scripts/gen-protocol.mjs";

describe("generated files", () => {
  it("src/protocol.gen.ts is generated from the proto crate's schema (npm run generate)", () => {
    const fresh = (generate as (s: unknown) => string)(JSON.parse(readFileSync(schemaPath as string, "utf8")));
    expect(readFileSync(outputPath as string, "utf8")).toBe(fresh);
  });

  it("gateway/assets/herald.js, served at /herald.js, is a fresh build of this package (npm run build)", async () => {
    const fresh = await (browserBundle as () => Promise<string>)();
    expect(readFileSync(committedBundle as string, "utf8") === fresh).toBe(true);
  });
});
