// The examples in docs/client-js.md marked `<!-- test: node -->` and
// `<!-- test: browser -->` run against a real node, as a reader would run them.
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { afterEach, expect, it } from "vitest";
import { servePage, useChromium } from "../chromium.js";
import { eventually, publish, repo, repoFile, startNode, stopAll } from "../harness.js";

/** The code block right after `<!-- test: KIND -->`, with the docs' node address replaced. */
function snippet(kind: string, origin: string): string {
  const m = new RegExp(`<!-- test: ${kind} -->\\n\`\`\`\\w+\\n([\\s\\S]*?)\`\`\``).exec(repoFile("docs/client-js.md"));
  if (!m?.[1]) throw new Error(`no block marked test: ${kind} in docs/client-js.md`);
  return m[1].replaceAll("http://localhost:8080", origin);
}

const browser = useChromium();
afterEach(stopAll);

it("the Node quick start publishes and receives its review", async () => {
  const node = await startNode();
  // Inside the package, so that `import "herald-client"` resolves to its own build (dist/).
  const dir = `${repo}clients/js/test-results`;
  mkdirSync(dir, { recursive: true });
  writeFileSync(`${dir}/quickstart.mjs`, snippet("node", node.http));
  const p = spawn(process.execPath, [`${dir}/quickstart.mjs`], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  p.stdout.on("data", (d: Buffer) => (out += d.toString()));
  p.stderr.on("data", (d: Buffer) => (err += d.toString()));
  try {
    await eventually(`two lines from the quick start (stderr: ${err})`, () => out.split("\n").length > 2 || p.exitCode !== null);
    expect(out.split("\n").sort()).toEqual(["", "published at offset 1", "review #1 by ana: Great!"]);
    expect(p.exitCode).toBe(null); // still listening
  } finally {
    p.kill("SIGKILL");
  }
});

it("the browser quick start shows a review published with curl's body", async () => {
  const node = await startNode();
  const site = await servePage(snippet("browser", node.http));
  const page = await browser().newPage();
  await page.goto(site.url);
  // The snippet's top-level `const reviews` is a global binding (not a window property).
  await eventually("the page is subscribed", async () => (await page.evaluate("reviews.state")) === "subscribed");
  await publish(node, "reviews", "review_added", { author: "ana", text: "Great!" });
  await page.waitForSelector('#reviews li:has-text("#1 ana: Great!")');
  await page.close();
  site.close();
});
