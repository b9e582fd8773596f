// The unmodified npm `socket.io-client` (WebSocket transport) against real
// `herald` processes and a real `redis-server`: docs/socketio.md.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { Manager, io, type Socket } from "socket.io-client";
import { afterEach, describe, expect, it } from "vitest";
import { eventually, jwt, metric, publish, startNode, startRedis, stopAll, type Node } from "../harness.js";
import { connected } from "./sockets.js";

const sockets: Socket[] = [];

afterEach(() => {
  for (const s of sockets.splice(0)) s.disconnect();
  stopAll();
});

const opts = { transports: ["websocket"], reconnectionDelay: 100, reconnectionDelayMax: 200 };

/**
 * A socket on `nsp` of `node` on a connection of its own, kept for closing
 * after the test. `io(url)` takes the namespace from the URL's path, where a
 * `#` would start the fragment; a Manager takes any namespace name.
 */
function socket(node: Node, nsp: string, auth?: Record<string, unknown>): Socket {
  const s = nsp.includes("#")
    ? new Manager(node.http, opts).socket(nsp, auth ? { auth } : {}).connect()
    : io(`${node.http}${nsp}`, { ...opts, forceNew: true, ...(auth ? { auth } : {}) });
  sockets.push(s);
  return s;
}

function refused(s: Socket): Promise<Error & { data?: { code?: string } }> {
  return new Promise((resolve, reject) => {
    s.once("connect", () => reject(new Error("connected, expected connect_error")));
    s.once("connect_error", (e) => resolve(e));
  });
}

describe("socket.io-client over WebSocket", () => {
  it("a namespace receives a publication from the HTTP API as the named event, with its offset", async () => {
    const node = await startNode();
    const s = socket(node, "/reviews");
    const got: [unknown, string][] = [];
    s.on("review_added", (data: unknown, offset: string) => got.push([data, offset]));
    await connected(s);
    const offset = await publish(node, "reviews", "review_added", { stars: 5, text: "hi" });
    await eventually("the event", () => got.length === 1);
    expect(got[0]?.[0]).toEqual({ stars: 5, text: "hi" });
    expect(got[0]?.[1]).toMatch(new RegExp(`^[A-Za-z0-9]+:${offset}$`));
  });

  it("two namespaces share one connection, each getting only its channel", async () => {
    const node = await startNode();
    const manager = new Manager(node.http, opts);
    const a = manager.socket("/a");
    const b = manager.socket("/b");
    sockets.push(a, b);
    const gotA: unknown[] = [];
    const gotB: unknown[] = [];
    a.on("ev", (d: unknown) => gotA.push(d));
    b.on("ev", (d: unknown) => gotB.push(d));
    a.connect();
    b.connect();
    await Promise.all([connected(a), connected(b)]);
    expect(await metric(node, "herald_connections")).toBe(1);
    expect(await metric(node, 'herald_connections{protocol="socketio"}')).toBe(1);
    expect(await metric(node, 'herald_connections{protocol="herald"}')).toBe(0);
    await publish(node, "a", "ev", "for a");
    await publish(node, "b", "ev", "for b");
    await eventually("both events", () => gotA.length === 1 && gotB.length === 1);
    expect([gotA, gotB]).toEqual([["for a"], ["for b"]]);
    expect(await metric(node, 'herald_messages_delivered_total{protocol="socketio"}')).toBe(2);
    expect(await metric(node, 'herald_messages_delivered_total{protocol="herald"}')).toBe(0);
    // Leaving one namespace keeps the other.
    a.disconnect();
    await publish(node, "a", "ev", "late");
    await publish(node, "b", "ev", "still");
    await eventually("b's second event", () => gotB.length === 2);
    expect(gotA).toEqual(["for a"]);
  });

  it("emit with an ack gets the offset, and other subscribers get the event", async () => {
    const node = await startNode();
    const sender = socket(node, "/chat");
    const reader = socket(node, "/chat");
    const seen: unknown[] = [];
    reader.on("chat message", (d: unknown) => seen.push(d));
    await Promise.all([connected(sender), connected(reader)]);
    const ack = await sender.timeout(5000).emitWithAck("chat message", { text: "hello" });
    expect(ack).toEqual({ offset: 1 });
    await eventually("the reader's event", () => seen.length === 1);
    expect(seen).toEqual([{ text: "hello" }]);
    // A refusal comes back in the ack, and the socket stays connected.
    const bad = await sender.timeout(5000).emitWithAck("x", 1, 2);
    expect(bad.error.code).toBe("bad_request");
    const binary = await sender.timeout(5000).emitWithAck("x", Buffer.from([1, 2]));
    expect(binary.error.message).toMatch(/binary/);
    expect(sender.connected).toBe(true);
  });

  it("a forbidden or invalid namespace gets connect_error; others on the connection carry on", async () => {
    const node = await startNode();
    const manager = new Manager(node.http, opts);
    const ok = manager.socket("/news");
    const inbox = manager.socket("/inbox#42");
    const spaced = manager.socket("/a b");
    sockets.push(ok, inbox, spaced);
    ok.connect();
    await connected(ok);
    const [e1, e2] = await Promise.all([refused(inbox.connect()), refused(spaced.connect())]);
    expect(e1.data?.code).toBe("forbidden");
    expect(e2.data?.code).toBe("bad_request");
    expect(e2.message).toMatch(/whitespace/);
    const got: unknown[] = [];
    ok.on("ev", (d: unknown) => got.push(d));
    await publish(node, "news", "ev", 1);
    await eventually("the event", () => got.length === 1);
  });

  it("the auth token is the connection JWT", async () => {
    const secret = "socketio-secret-0123456789abcdef0123";
    const dir = mkdtempSync(`${tmpdir()}/herald-sio-`);
    writeFileSync(`${dir}/herald.toml`, `[auth]\njwt_secret = "${secret}"\n`);
    const node = await startNode(["--config", `${dir}/herald.toml`]);
    const token = jwt(secret, { sub: "42", exp: Math.floor(Date.now() / 1000) + 60 });
    const s = socket(node, "/inbox#42", { token });
    await connected(s);
    const got: unknown[] = [];
    s.on("note", (d: unknown) => got.push(d));
    await publish(node, "inbox#42", "note", "for 42");
    await eventually("the user's event", () => got.length === 1);
    const e = await refused(socket(node, "/news", { token: "not-a-jwt" }));
    expect(e.data?.code).toBe("unauthorized");
    expect((await refused(socket(node, "/news"))).data?.code).toBe("unauthorized");
  });

  it("a client emit reaches a client on another node", async () => {
    const redis = await startRedis();
    const a = await startNode(["--redis-url", redis.url]);
    const b = await startNode(["--redis-url", redis.url]);
    const sender = socket(a, "/room");
    const reader = socket(b, "/room");
    const seen: unknown[] = [];
    reader.on("chat message", (d: unknown) => seen.push(d));
    await Promise.all([connected(sender), connected(reader)]);
    const ack = await sender.timeout(5000).emitWithAck("chat message", "across");
    expect(ack.offset).toBeGreaterThan(0);
    await eventually("the other node's client", () => seen.length === 1);
    expect(seen).toEqual(["across"]);
  });

  it("recovers on another node after kill -9, even before any event, with recovered === true", async () => {
    const redis = await startRedis();
    const a = await startNode(["--redis-url", redis.url]);
    const b = await startNode(["--redis-url", redis.url]);
    await publish(b, "feed", "tick", 0);
    const s = socket(a, "/feed");
    const seqs: number[] = [];
    s.on("tick", (d: number) => seqs.push(d));
    await connected(s);
    expect(s.recovered).toBe(false);
    // The client has seen no event when its node dies; the next connection goes to b.
    (s.io as unknown as { uri: string }).uri = b.http;
    a.kill("SIGKILL");
    await eventually("the disconnect", () => !s.connected);
    for (let i = 1; i <= 3; i++) await publish(b, "feed", "tick", i);
    await eventually("the reconnect", () => s.connected);
    expect(s.recovered).toBe(true);
    await publish(b, "feed", "tick", 4);
    await eventually("every event", () => seqs.length >= 4);
    expect(seqs).toEqual([1, 2, 3, 4]);
    // Once more, now from the offset of the last event seen.
    s.io.engine.close();
    await eventually("the disconnect", () => !s.connected);
    await publish(b, "feed", "tick", 5);
    await eventually("the reconnect", () => s.connected);
    expect(s.recovered).toBe(true);
    await eventually("the missed event", () => seqs.length >= 5);
    expect(seqs).toEqual([1, 2, 3, 4, 5]);
  });

  it("Engine.IO errors: EIO=3, an unknown transport, an unknown sid", async () => {
    const node = await startNode();
    const get = async (q: string) => {
      const res = await fetch(`${node.http}/socket.io/?${q}`);
      return [res.status, await res.json()];
    };
    expect(await get("EIO=3&transport=websocket")).toEqual([400, { code: 5, message: "Unsupported protocol version" }]);
    expect(await get("EIO=4&transport=carrier-pigeon")).toEqual([400, { code: 0, message: "Transport unknown" }]);
    expect(await get("EIO=4&transport=websocket&sid=abc")).toEqual([400, { code: 1, message: "Session ID unknown" }]);
    expect(await get("EIO=4&transport=websocket")).toEqual([400, { code: 3, message: "Bad request" }]);
  });
});
