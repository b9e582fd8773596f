// examples/reviews: the backend stores a review and publishes it through the HTTP API.
import { expect, it } from "vitest";
import { startExample, startNode } from "../harness.js";
import { examplePages, live, post, shows } from "./pages.js";

const open = examplePages();

it("a review posted to the backend appears live in the page, after the loaded list", async () => {
  const node = await startNode();
  const app = await startExample("reviews", ["--herald", node.http]);
  const page = await open(app.url);
  await live(page);
  await shows(page, "#reviews li", "Herald: Post a review");
  await post(`${app.url}reviews`, { author: "carol", stars: 4, text: "quick and friendly" });
  await shows(page, "#reviews li", "★★★★ carol: quick and friendly");
  // Posted from the page's own form.
  await page.fill("[name=author]", "dan");
  await page.fill("[name=text]", "from the form");
  await page.click("button");
  await shows(page, "#reviews li", "dan: from the form");
  expect(await page.locator("#reviews li").count()).toBe(3);
});

it("after the node restarts, the page is told it missed updates and reloads the list", async () => {
  const node = await startNode();
  const app = await startExample("reviews", ["--herald", node.http]);
  const page = await open(app.url);
  await live(page);
  node.kill("SIGKILL");
  await node.exited;
  // Stored by the backend; its publish fails, so no page hears of it live.
  await post(`${app.url}reviews`, { author: "erin", stars: 3, text: "posted while Herald was down" });
  // A new node on the same address: a new embedded broker, so a new epoch for
  // "reviews", and the page's position cannot be recovered.
  await startNode(["--listen", new URL(node.http).host]);
  await shows(page, "#reviews li", "erin: posted while Herald was down");
  await shows(page, "#note", "Missed updates while offline: list reloaded.");
  expect(app.logs()).toContain("review 2 stored but not published");
});
