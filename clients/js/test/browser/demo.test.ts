// The demo page every node serves at `/`, built on the SDK it serves at /herald.js.
import { afterEach, expect, it } from "vitest";
import { useChromium } from "../chromium.js";
import { publish, startNode, stopAll } from "../harness.js";

const browser = useChromium();
afterEach(stopAll);

it("the demo page posts and receives reviews through the SDK", async () => {
  const node = await startNode();
  const page = await browser().newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${node.http}/`);
  await page.waitForSelector(`#state.connected:has-text("${node.id}")`);
  await page.waitForSelector("#post:not([disabled])");
  await page.fill("#author", "ana");
  await page.fill("#text", "great service");
  await page.click("#post");
  await page.waitForSelector('#list li:has-text("great service")');
  await expect(page.textContent("#status")).resolves.toMatch(/posted to "reviews" as #1/);
  await publish(node, "reviews", "review_added", { author: "api", stars: 4, text: "from the backend" });
  await page.waitForSelector('#list li:has-text("from the backend")');
  expect(errors).toEqual([]);
  await page.close();
});
