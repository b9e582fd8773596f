// socket.io-client's browser build in headless Chromium, through a kill -9 of
// its node: a plain page (served with the build from its own loopback site)
// connects through HAProxy, so the same socket reconnects to the surviving
// node and recovers (docs/socketio.md, "Recovery across nodes").
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { dirname } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { useChromium } from "../chromium.js";
import { eventually, metric, publish, publishAtRate, startNode, startRedis, stopAll } from "../harness.js";
import { startHaProxy, stopHaProxies } from "../haproxy.js";

const browser = useChromium();
const sites: (() => void)[] = [];

afterEach(() => {
  for (const close of sites.splice(0)) close();
  stopHaProxies();
  stopAll();
});

/** The package's own browser build, as a page would load it from a CDN or its site. */
const bundle = readFileSync(
  `${dirname(createRequire(import.meta.url).resolve("socket.io-client/package.json"))}/dist/socket.io.min.js`,
  "utf8",
);

/**
 * `html` at `/` and the bundle at `/socket.io.min.js`, from a real loopback
 * origin (Chromium's local network checks block the WebSockets of a page
 * without one).
 */
async function serveSite(html: string): Promise<string> {
  const site = createServer((req, res) => {
    if (req.url === "/socket.io.min.js") res.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
    else if (req.url === "/") res.writeHead(200, { "content-type": "text/html" }).end(html);
    else if (req.url === "/favicon.ico") res.writeHead(204).end();
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => site.listen(0, "127.0.0.1", r));
  sites.push(() => site.close());
  return `http://127.0.0.1:${(site.address() as AddressInfo).port}/`;
}

describe("socket.io-client's browser build", () => {
  it("kill -9 of the page's node while publishing at 200/s: recovered, every publication once, in order", async () => {
    const redis = await startRedis();
    // History covering a few seconds at 200/s: the page is offline until it reconnects.
    const a = await startNode(["--redis-url", redis.url, "--history-size", "1000"]);
    const b = await startNode(["--redis-url", redis.url, "--history-size", "1000"]);
    const lb = await startHaProxy([a, b]);
    const page = await browser().newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    // A plain page: the global `io` of the browser build, a line per tick in the DOM.
    const html = `<!doctype html>
<p id="news"></p><ol id="ticks"></ol>
<script src="/socket.io.min.js"></script>
<script>
  window.log = [];
  const socket = io(${JSON.stringify(`${lb.http}/ticker`)}, {
    transports: ["websocket"], reconnectionDelay: 100, reconnectionDelayMax: 200,
  });
  socket.on("connect", () => log.push("connect recovered=" + socket.recovered));
  socket.on("disconnect", (reason) => log.push("disconnect " + reason));
  socket.on("news", (data) => (document.getElementById("news").textContent = data.text));
  socket.on("tick", (data) => {
    const li = document.createElement("li");
    li.textContent = String(data.seq);
    document.getElementById("ticks").append(li);
  });
</script>`;
    await page.goto(await serveSite(html));
    const log = () => page.evaluate(() => (window as unknown as { log: string[] }).log);
    const count = () => page.locator("#ticks li").count();
    await eventually("the page is connected", async () => (await log()).length === 1);
    expect(await metric(a, "herald_connections")).toBe(1);
    await publish(b, "ticker", "news", { text: "hello from the API" });
    await page.locator("#news", { hasText: "hello from the API" }).waitFor({ timeout: 20_000 });

    const ticks = publishAtRate(b, "ticker", 200);
    await eventually("deliveries before the kill", async () => (await count()) >= 150);
    a.kill("SIGKILL");
    await eventually("reconnected", async () => (await log()).length >= 3, 30_000);
    expect(await metric(b, "herald_connections")).toBe(1);
    const at = ticks.sent();
    await eventually("publications after the reconnect", () => ticks.sent() >= at + 200);
    const sent = await ticks.stop();
    await eventually(`all ${sent} publications`, async () => (await count()) >= sent);
    const shown = (await page.locator("#ticks li").allTextContents()).map(Number);
    expect(shown).toEqual(Array.from({ length: sent }, (_, i) => i + 1));
    expect(await log()).toEqual(["connect recovered=false", "disconnect transport close", "connect recovered=true"]);
    // Reconnection attempts that reached HAProxy before it took node a out
    // (a 503, logged by Chromium) are the only errors allowed.
    expect(errors.filter((e) => !e.includes(`WebSocket connection to '${lb.http.replace("http", "ws")}/socket.io/`))).toEqual([]);
    await page.close();
  });

  it("a page on another origin polls with headers of its own: the CORS preflight passes and events arrive", async () => {
    const node = await startNode();
    const page = await browser().newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    // extraHeaders make every polling request non-simple: the browser asks OPTIONS first.
    const url = await serveSite(`<!doctype html><script src="/socket.io.min.js"></script><script>
      window.got = [];
      const socket = io(${JSON.stringify(`${node.http}/cors`)}, { transports: ["polling"], extraHeaders: { "x-app-version": "7" } });
      socket.on("hello", (d) => got.push(d));
    </script>`);
    await page.goto(url);
    await page.waitForFunction("socket.connected");
    await publish(node, "cors", "hello", { n: 1 });
    await page.waitForFunction("got.length === 1");
    expect(await page.evaluate("got")).toEqual([{ n: 1 }]);
    expect(errors).toEqual([]);
    await page.close();
  });
});
