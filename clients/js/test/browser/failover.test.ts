// The kill -9 scenario in headless Chromium: the page loads the bundle from
// the node (`/herald.js`), exactly as a plain HTML page would.
import { afterEach, describe, expect, it } from "vitest";
import { servePage, useChromium } from "../chromium.js";
import { eventually, publishAtRate, startNode, startRedis, stopAll } from "../harness.js";

const browser = useChromium();
afterEach(stopAll);

describe("in a browser", () => {
  it("kill -9 of the page's node while publishing at 200/s: every publication once, in order", async () => {
    const redis = await startRedis();
    // History covering a few seconds at 200/s: the page is offline until it reconnects.
    const a = await startNode(["--redis-url", redis.url, "--history-size", "1000"]);
    const b = await startNode(["--redis-url", redis.url, "--history-size", "1000"]);
    const page = await browser().newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    // A plain HTML page, served from its own loopback origin, that loads the
    // bundle node a serves; Chromium's local network checks treat it as a real site.
    const html = `<!doctype html><script src="${a.http}/herald.js"></script><script>
      window.seqs = []; window.log = [];
      const herald = new Herald(${JSON.stringify([a.ws, b.ws])}, { backoff: { initialMs: 200 } });
      herald.on("connected", (i) => log.push({ connected: i.node, resumed: i.resumed }));
      herald.on("disconnected", (d) => log.push({ disconnected: d.code }));
      herald.channel("ticker").on("tick", (data) => seqs.push(data.seq));
    </script>`;
    const site = await servePage(html);
    await page.goto(site.url);
    const count = () => page.evaluate(() => (window as unknown as { seqs: number[] }).seqs.length);
    const log = () => page.evaluate(() => (window as unknown as { log: Record<string, unknown>[] }).log);
    await eventually("the page is connected to node a", async () => (await log()).some((l) => l.connected === a.id));

    const ticks = publishAtRate(b, "ticker", 200);
    await eventually("deliveries before the kill", async () => (await count()) >= 150);
    a.kill("SIGKILL");
    await eventually("resumed on node b", async () => (await log()).some((l) => l.connected === b.id && l.resumed === true));
    const at = ticks.sent();
    await eventually("publications after the resume", () => ticks.sent() >= at + 200);
    const sent = await ticks.stop();
    await eventually(`all ${sent} publications`, async () => (await count()) >= sent);
    const seqs = await page.evaluate(() => (window as unknown as { seqs: number[] }).seqs);
    expect(seqs).toEqual(Array.from({ length: sent }, (_, i) => i + 1));
    // The only errors are the failed connection attempts to the dead node.
    expect(errors.filter((e) => !e.includes(a.ws))).toEqual([]);
    await page.close();
    site.close();
  });
});
