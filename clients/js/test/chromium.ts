// Headless Chromium for the browser tests: Debian's `chromium` package
// (`CHROMIUM_BIN` points elsewhere), driven by playwright-core.
import { existsSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { chromium, type Browser } from "playwright-core";
import { afterAll, beforeAll } from "vitest";

export async function launchChromium(): Promise<Browser> {
  const executablePath = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
  if (!existsSync(executablePath)) throw new Error(`${executablePath} is missing: apt-get install chromium`);
  return chromium.launch({
    executablePath,
    // Playwright gives each launch a fresh profile; these keep Chromium off the
    // (closed) network at start-up.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** One browser for the file's tests: launched before them, closed after. */
export function useChromium(): () => Browser {
  let browser: Browser | undefined;
  beforeAll(async () => {
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
  });
  return () => {
    if (!browser) throw new Error("Chromium is not running");
    return browser;
  };
}

/**
 * Serves `html` from its own loopback origin, as a real site would (a page
 * fulfilled by request interception has no address, and Chromium's local
 * network checks then block its WebSockets to loopback).
 */
export async function servePage(html: string): Promise<{ url: string; close: () => void }> {
  const site = createServer((_, res) => res.writeHead(200, { "content-type": "text/html" }).end(html));
  await new Promise<void>((r) => site.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(site.address() as AddressInfo).port}/`, close: () => site.close() };
}
