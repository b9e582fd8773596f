// Hostile Socket.IO traffic over WebSocket: a flood of CONNECTs to many
// namespaces gets the documented refusals, and other clients notice nothing.
import { io } from "socket.io-client";
import { afterEach, expect, it } from "vitest";
import WebSocket from "ws";
import { eventually, publish, startNode, stopAll } from "../harness.js";

afterEach(stopAll);

it("a flood of CONNECTs to many namespaces is refused as documented; another client keeps receiving", async () => {
  const node = await startNode(["--max-subscriptions", "50"]);
  const bystander = io(`${node.http}/news`, { transports: ["websocket"], reconnection: false });
  const news: unknown[] = [];
  bystander.on("headline", (d: unknown) => news.push(d));
  await new Promise<void>((resolve) => bystander.on("connect", () => resolve()));

  // A raw Engine.IO client, to send faster than any real one would.
  const ws = new WebSocket(`${node.ws.replace("/ws", "")}/socket.io/?EIO=4&transport=websocket`);
  const frames: string[] = [];
  let closed: number | undefined;
  ws.on("message", (d) => frames.push(d.toString()));
  ws.on("close", (code) => (closed = code));
  await eventually("the open packet", () => frames.some((f) => f.startsWith("0{")));
  ws.send("40");
  const total = 1500;
  for (let i = 0; i < total; i++) ws.send(`40/flood-${i},`);
  await eventually("the node is done with the flood", () => closed !== undefined || frames.filter((f) => /^4[04]\/flood-/.test(f)).length >= 300);

  const accepted = frames.filter((f) => f.startsWith("40/flood-"));
  const refused = frames.filter((f) => f.startsWith("44/flood-")).map((f) => JSON.parse(f.slice(f.indexOf(",") + 1)) as { message: string; data: { code: string } });
  expect(accepted.length).toBeLessThanOrEqual(50);
  expect(refused.length).toBeGreaterThan(0);
  const codes = new Set(refused.map((r) => r.data.code));
  for (const code of codes) expect(["too_many_subscriptions", "rate_limited"]).toContain(code);
  expect(codes.has("too_many_subscriptions")).toBe(true);
  // Past the refusals the rate limit answers, the flood closes the connection (4502, command flood).
  await eventually("the flooder is closed", () => closed !== undefined);
  expect(closed).toBe(4502);

  await publish(node, "news", "headline", { n: 1 });
  await eventually("the bystander still receives", () => news.length === 1);
  expect(bystander.connected).toBe(true);
  bystander.close();
});
