// Builds the package: dist/index.js (ESM), dist/index.cjs (CJS), dist/*.d.ts,
// and the single-file browser bundle dist/herald.min.js, which is also
// committed as gateway/assets/herald.js (the gateway serves it at /herald.js).
//   npm run build               build everything, refresh the committed bundle
//   npm run build -- --check    exit 1 when the committed bundle differs from a fresh build
//   node scripts/build.mjs --dist-only   only dist/ (on install, and for the tests)
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const here = (p) => fileURLToPath(new URL(`../${p}`, import.meta.url));
const pkg = JSON.parse(readFileSync(here("package.json"), "utf8"));
export const committedBundle = here("../../gateway/assets/herald.js");

/** The browser bundle's text: deterministic for a given source and esbuild version. */
export async function browserBundle() {
  const out = await build({
    entryPoints: [here("src/browser.ts")],
    bundle: true,
    minify: true,
    format: "iife",
    target: "es2020",
    legalComments: "none",
    banner: { js: `/*! ${pkg.name} ${pkg.version} | ${pkg.license} */` },
    write: false,
  });
  return out.outputFiles[0].text;
}

async function main() {
  const bundle = await browserBundle();
  if (process.argv.includes("--check")) {
    if (readFileSync(committedBundle, "utf8") !== bundle) {
      console.error("gateway/assets/herald.js differs from a fresh build: run `npm run build` in clients/js");
      process.exit(1);
    }
    return;
  }
  mkdirSync(here("dist"), { recursive: true });
  const common = { entryPoints: [here("src/index.ts")], bundle: true, target: "es2020", platform: "neutral", logLevel: "warning" };
  await build({ ...common, format: "esm", outfile: here("dist/index.js") });
  await build({ ...common, format: "cjs", outfile: here("dist/index.cjs") });
  execFileSync(process.execPath, [here("node_modules/typescript/bin/tsc"), "-p", here("tsconfig.build.json")], { stdio: "inherit" });
  writeFileSync(here("dist/herald.min.js"), bundle);
  if (process.argv.includes("--dist-only")) return;
  writeFileSync(committedBundle, bundle);
  console.log(`built dist/ and gateway/assets/herald.js (${bundle.length} bytes)`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
