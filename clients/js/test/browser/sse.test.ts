// Server-Sent Events in headless Chromium: a plain page's `EventSource`
// (no Herald client at all) on HAProxy in front of two nodes gets every
// publication, and after `kill -9` of its node reconnects by itself and
// resumes from `Last-Event-ID` on the other node: nothing lost, nothing twice.
import { afterEach, describe, expect, it } from "vitest";
import { servePage, useChromium } from "../chromium.js";
import { startHaProxy, stopHaProxies } from "../haproxy.js";
import { eventually, publishAtRate, startNode, startRedis, stopAll } from "../harness.js";

const browser = useChromium();
afterEach(() => {
  stopHaProxies();
  stopAll();
});

describe("EventSource in a browser", () => {
  it("receives publications and resumes after its node is killed", async () => {
    const redis = await startRedis();
    const a = await startNode(["--redis-url", redis.url, "--history-size", "1000", "--node-id", "sse-a"]);
    const b = await startNode(["--redis-url", redis.url, "--history-size", "1000", "--node-id", "sse-b"]);
    const proxy = await startHaProxy([a, b]);
    const page = await browser().newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    const html = `<!doctype html><script>
      window.seqs = []; window.opens = 0; window.unrecovered = []; window.ids = [];
      const es = new EventSource(${JSON.stringify(`${proxy.http}/sse?channel=ticker`)});
      es.onopen = () => opens++;
      es.addEventListener("tick", (e) => { seqs.push(JSON.parse(e.data).seq); ids.push(e.lastEventId); });
      es.addEventListener("unrecovered", (e) => unrecovered.push(e.data));
    </script>`;
    const site = await servePage(html);
    await page.goto(site.url);
    type W = { seqs: number[]; opens: number; unrecovered: string[]; ids: string[] };
    const seqs = () => page.evaluate(() => (window as unknown as W).seqs);
    const opens = () => page.evaluate(() => (window as unknown as W).opens);
    await eventually("the stream is open", async () => (await opens()) === 1);
    await eventually("subscribed on node a", async () => {
      const m = await fetch(`${a.http}/metrics`).then((r) => r.text());
      return m.includes('herald_connections{protocol="sse"} 1');
    });

    const ticks = publishAtRate(b, "ticker", 100);
    await eventually("deliveries before the kill", async () => (await seqs()).length >= 50);
    a.kill("SIGKILL");
    await eventually("reconnected (to node b)", async () => (await opens()) >= 2);
    const at = ticks.sent();
    await eventually("publications after the resume", () => ticks.sent() >= at + 100);
    const sent = await ticks.stop();
    await eventually(`all ${sent} publications`, async () => (await seqs()).length >= sent);
    expect(await seqs()).toEqual(Array.from({ length: sent }, (_, i) => i + 1));
    const ids = await page.evaluate(() => (window as unknown as W).ids);
    expect(ids.at(-1)).toMatch(new RegExp(`^ticker=[A-Za-z0-9]+:${sent}$`));
    expect(await page.evaluate(() => (window as unknown as W).unrecovered)).toEqual([]);
    expect(errors).toEqual([]);
    await page.close();
    site.close();
  });
});
