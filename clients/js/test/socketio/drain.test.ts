// The npm `socket.io-client` through a SIGTERM drain of its node: behind
// HAProxy, the same socket reconnects to the other node and recovers
// (docs/socketio.md, "Server-side close" and "Recovery across nodes").
import { io, type Socket } from "socket.io-client";
import { afterEach, describe, expect, it } from "vitest";
import { eventually, metric, publishAtRate, startNode, startRedis, stopAll } from "../harness.js";
import { startHaProxy, stopHaProxies } from "../haproxy.js";

let socket: Socket | undefined;

afterEach(() => {
  socket?.disconnect();
  socket = undefined;
  stopHaProxies();
  stopAll();
});

describe("socket.io-client and a drain", () => {
  it("SIGTERM of the client's node while publishing at 200/s: recovered on the other, every publication once, in order", async () => {
    const redis = await startRedis();
    // History covering a few seconds at 200/s: the client is away until it reconnects.
    const args = ["--redis-url", redis.url, "--history-size", "1000", "--drain-timeout", "2s"];
    const a = await startNode(args);
    const b = await startNode(args);
    const lb = await startHaProxy([a, b]);

    const s = io(`${lb.http}/ticker`, { transports: ["websocket"], reconnectionDelay: 100, reconnectionDelayMax: 200 });
    socket = s;
    const seqs: number[] = [];
    const log: string[] = [];
    s.on("tick", (data: { seq: number }) => seqs.push(data.seq));
    s.on("connect", () => log.push(`connect recovered=${s.recovered}`));
    s.on("disconnect", (reason) => log.push(`disconnect ${reason}`));
    await eventually("connected", () => s.connected);
    expect(await metric(a, "herald_connections")).toBe(1);
    expect(await metric(b, "herald_connections")).toBe(0);

    const ticks = publishAtRate(b, "ticker", 200);
    await eventually("deliveries before the drain", () => seqs.length >= 150);
    a.kill("SIGTERM");
    await eventually("reconnected", () => log.length >= 3 && s.connected, 30_000);
    expect(await metric(b, "herald_connections")).toBe(1);
    const at = ticks.sent();
    await eventually("publications after the reconnect", () => ticks.sent() >= at + 200);
    const sent = await ticks.stop();
    await eventually(`all ${sent} publications`, () => seqs.length >= sent);
    expect(seqs).toEqual(Array.from({ length: sent }, (_, i) => i + 1));
    // The drain closed the connection without a DISCONNECT, so the Manager
    // reconnected by itself, and the same socket recovered.
    expect(log).toEqual(["connect recovered=false", "disconnect transport close", "connect recovered=true"]);
    expect(await a.exited).toBe(0);
  });
});
