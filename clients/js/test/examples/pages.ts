// What the examples' tests share: one Chromium per file, a fresh browser
// context (one user) per page, and waits on what the page shows.
import type { BrowserContext, Page } from "playwright-core";
import { afterEach } from "vitest";
import { useChromium } from "../chromium.js";
import { stopAll } from "../harness.js";

/**
 * Registers this file's hooks: Chromium for the file; after each test, its
 * pages closed, its processes stopped, and a failure if a page threw.
 * Returns `open(url)`, which opens a page in a context of its own.
 */
export function examplePages(): (url: string) => Promise<Page> {
  const browser = useChromium();
  const contexts: BrowserContext[] = [];
  const errors: string[] = [];
  afterEach(async () => {
    await Promise.all(contexts.splice(0).map((c) => c.close()));
    stopAll();
    const thrown = errors.splice(0);
    if (thrown.length > 0) throw new Error(`the page threw:\n${thrown.join("\n")}`);
  });
  return async (url) => {
    const context = await browser().newContext();
    contexts.push(context);
    const page = await context.newPage();
    page.on("pageerror", (e) => errors.push(`${url}: ${e.message}`));
    await page.goto(url);
    return page;
  };
}

/** Waits until the page's channel is subscribed: every example shows `live` in `#state` then. */
export async function live(page: Page): Promise<void> {
  await page.locator("#state", { hasText: /^live$/ }).waitFor();
}

/** Waits until an element matching `selector` contains `text`. */
export async function shows(page: Page, selector: string, text: string): Promise<void> {
  await page.locator(selector, { hasText: text }).waitFor();
}

/** POSTs `body` as JSON to the example's backend; throws unless it answers 2xx. */
export async function post(url: string, body: unknown): Promise<void> {
  const res = await fetch(url, { method: "POST", body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`POST ${url}: ${res.status} ${await res.text()}`);
}
