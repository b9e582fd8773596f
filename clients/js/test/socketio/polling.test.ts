// The unmodified npm `socket.io-client` over HTTP long-polling, and the
// upgrade from it to WebSocket, against real `herald` processes (and Redis
// and HAProxy for the cluster): docs/socketio.md.
import { NodeWebSocket, NodeXHR } from "engine.io-client";
import { io, type Socket } from "socket.io-client";
import { afterEach, describe, expect, it } from "vitest";
import { eventually, publish, publishAtRate, startNode, startRedis, stopAll, type Node } from "../harness.js";
import { connected } from "./sockets.js";
import { startHaProxy, stopHaProxies } from "../haproxy.js";

const sockets: Socket[] = [];

afterEach(() => {
  for (const s of sockets.splice(0)) s.disconnect();
  stopHaProxies();
  stopAll();
});

const quick = { reconnectionDelay: 100, reconnectionDelayMax: 200, forceNew: true };

function socket(url: string, opts: Record<string, unknown> = {}): Socket {
  const s = io(url, { ...quick, ...opts });
  sockets.push(s);
  return s;
}

/** A labelled series of the node's `/metrics` (0 when absent). */
async function series(node: Node, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${node.http}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return Number(line?.split(" ").at(-1) ?? 0);
}

/** Raw Engine.IO polling requests on a node (or a proxy). */
function engine(base: string) {
  const url = (sid?: string) => `${base}/socket.io/?EIO=4&transport=polling${sid ? `&sid=${sid}` : ""}`;
  return {
    async open(): Promise<string> {
      const res = await fetch(url());
      const body = await res.text();
      expect(res.status, body).toBe(200);
      expect(body.startsWith("0{")).toBe(true);
      return (JSON.parse(body.slice(1)) as { sid: string }).sid;
    },
    async get(sid: string): Promise<[number, string]> {
      const res = await fetch(url(sid));
      return [res.status, await res.text()];
    },
    async post(sid: string, body: string | ReadableStream<Uint8Array>): Promise<[number, string]> {
      const init: RequestInit & { duplex?: string } = { method: "POST", body };
      if (typeof body !== "string") init.duplex = "half";
      const res = await fetch(url(sid), init);
      return [res.status, await res.text()];
    },
  };
}

const unknownSid = JSON.stringify({ code: 1, message: "Session ID unknown" });
const badRequest = JSON.stringify({ code: 3, message: "Bad request" });

describe("socket.io-client over HTTP long-polling", () => {
  it("default options: polling then the upgrade to WebSocket, losing and repeating nothing across it", async () => {
    const node = await startNode();
    // Publishing from before the client connects, through its upgrade.
    const ticker = publishAtRate(node, "live", 400);
    const s = socket(`${node.http}/live`);
    const seqs: number[] = [];
    const via: string[] = [];
    s.on("tick", (d: { seq: number }) => {
      seqs.push(d.seq);
      via.push(s.io.engine.transport.name);
    });
    await connected(s);
    expect(s.io.engine.transport.name === "polling" || s.io.engine.transport.name === "websocket").toBe(true);
    await eventually("the upgrade", () => s.io.engine.transport.name === "websocket");
    await eventually("events over the WebSocket", () => via.filter((t) => t === "websocket").length >= 50);
    const sent = await ticker.stop();
    await eventually("every event", () => seqs.at(-1) === sent);
    // Every publication since the subscription started, once, in order.
    const first = seqs[0] as number;
    expect(seqs).toEqual(Array.from({ length: sent - first + 1 }, (_, i) => first + i));
    expect(await series(node, "herald_socketio_upgrades_total", 'outcome="ok"')).toBe(1);
    // The same session goes on over the WebSocket: emit with an ack.
    const ack = await s.timeout(5000).emitWithAck("note", { text: "after the upgrade" });
    expect(ack.offset).toBe(sent + 1);
    expect(await series(node, "herald_socketio_polling_requests_total", 'method="open",outcome="ok"')).toBe(1);
  });

  it("a stream of publications through the switch from polling to WebSocket: every one once, in order, over both", async () => {
    const node = await startNode();
    const s = socket(`${node.http}/live`, { transports: [NodeXHR, LateWebSocket] });
    const seqs: number[] = [];
    const via: string[] = [];
    s.on("tick", (d: { seq: number }) => {
      seqs.push(d.seq);
      via.push(s.io.engine.transport.name);
    });
    await connected(s);
    expect(s.io.engine.transport.name).toBe("polling");
    const ticker = publishAtRate(node, "live", 200);
    await eventually("the upgrade", () => s.io.engine.transport.name === "websocket");
    await eventually("events over the WebSocket", () => via.filter((t) => t === "websocket").length >= 40);
    const sent = await ticker.stop();
    await eventually("every event", () => seqs.at(-1) === sent);
    expect(seqs).toEqual(Array.from({ length: sent }, (_, i) => i + 1));
    expect(via.filter((t) => t === "polling").length).toBeGreaterThanOrEqual(20);
  });

  it('transports: ["polling"] only: receive a publication, emit with an ack to another client', async () => {
    const node = await startNode();
    const a = socket(`${node.http}/room`, { transports: ["polling"] });
    const b = socket(`${node.http}/room`, { transports: ["polling"] });
    const gotA: unknown[] = [];
    const gotB: unknown[] = [];
    a.on("ev", (d: unknown, offset: string) => gotA.push([d, offset]));
    b.on("chat", (d: unknown) => gotB.push(d));
    await Promise.all([connected(a), connected(b)]);
    const offset = await publish(node, "room", "ev", { n: 1 });
    await eventually("the publication", () => gotA.length === 1);
    expect(gotA[0]).toEqual([{ n: 1 }, expect.stringMatching(new RegExp(`:${offset}$`))]);
    const ack = await a.timeout(5000).emitWithAck("chat", "hello");
    expect(ack).toEqual({ offset: offset + 1 });
    await eventually("the other client's event", () => gotB.length === 1);
    expect(gotB).toEqual(["hello"]);
    // A quiet session lives on through its pings (default ping interval: 25 s,
    // so only the transport is checked here).
    expect(a.io.engine.transport.name).toBe("polling");
    expect(await series(node, "herald_socketio_polling_requests_total", 'method="post",outcome="ok"')).toBeGreaterThan(0);
  });

  it("hostile polling requests get the documented errors, and another client notices nothing", async () => {
    const node = await startNode(["--max-payload", "1024"]);
    const e = engine(node.http);
    // A bystander keeps receiving throughout.
    const bystander = socket(`${node.http}/calm`, { transports: ["polling"] });
    const calm: number[] = [];
    bystander.on("ev", (d: number) => calm.push(d));
    await connected(bystander);
    let n = 0;
    const check = async () => {
      await publish(node, "calm", "ev", ++n);
      await eventually(`bystander event ${n}`, () => calm.length === n);
    };

    // Unknown sid, GET and POST: 400 code 1, at once.
    expect(await e.get("nope")).toEqual([400, unknownSid]);
    expect(await e.get(`${"x".repeat(5000)}`)).toEqual([400, unknownSid]);
    expect(await e.post("nope", "40")).toEqual([400, unknownSid]);
    await check();

    // Two GETs at once: the second gets 400, the session closes (the first
    // gets the close packet), and the sid is gone.
    let sid = await e.open();
    expect(await e.post(sid, "40/x,")).toEqual([200, "ok"]);
    expect((await e.get(sid))[1]).toMatch(/^40\/x,/);
    const first = e.get(sid);
    await new Promise((r) => setTimeout(r, 200));
    expect(await e.get(sid)).toEqual([400, badRequest]);
    const [status, body] = await first;
    expect(status).toBe(200);
    expect(body.endsWith("1")).toBe(true);
    expect(await e.get(sid)).toEqual([400, unknownSid]);
    await check();

    // A POST over max_payload + 4 KiB: 413, and the session closes.
    sid = await e.open();
    expect((await e.post(sid, `42["x","${"a".repeat(6000)}"]`))[0]).toBe(413);
    await eventually("the session gone", async () => (await e.get(sid))[0] === 400);
    await check();

    // A POST while one is in flight: 400, and the session closes.
    sid = await e.open();
    let finish: () => void = () => {};
    const slow = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new TextEncoder().encode("4"));
        finish = () => {
          c.enqueue(new TextEncoder().encode("0"));
          c.close();
        };
      },
    });
    const inFlight = e.post(sid, slow);
    await new Promise((r) => setTimeout(r, 200));
    expect(await e.post(sid, "3")).toEqual([400, badRequest]);
    finish();
    await inFlight.catch(() => undefined);
    await eventually("the session gone", async () => (await e.get(sid))[0] === 400);
    await check();

    // Malformed payloads: 400 Bad request, and the session closes.
    for (const bad of ["4x", "40\u001e", "", "\u001e", "9", "0{}", "4\u001e40"]) {
      sid = await e.open();
      const [st, text] = await e.post(sid, bad);
      expect([st, text], JSON.stringify(bad)).toEqual([400, badRequest]);
      await eventually("the session gone", async () => (await e.get(sid))[0] === 400);
    }
    await check();
    // A Socket.IO packet that is readable but not a valid event is refused
    // like over WebSocket: in its ack (none here), the session stays.
    sid = await e.open();
    expect(await e.post(sid, '40/x,\u001e42/x,["unterminated')).toEqual([200, "ok"]);
    expect((await e.get(sid))[0]).toBe(200);
    expect(bystander.connected).toBe(true);
    expect(bystander.io.engine.transport.name).toBe("polling");
    expect(await series(node, "herald_socketio_polling_requests_total", 'method="get",outcome="overlap"')).toBe(1);
    expect(await series(node, "herald_socketio_polling_requests_total", 'method="post",outcome="too_large"')).toBe(1);
  });

  it("through HAProxy's sid routing: requests reach the node holding the session; kill -9 of it, and the client recovers on the other, every event once, in order", async () => {
    const redis = await startRedis();
    const args = ["--redis-url", redis.url, "--history-size", "1000"];
    const nodes = [await startNode(args), await startNode(args)];
    const lb = (await startHaProxy(nodes, { routeSids: true })).http;
    // Raw sessions, opened through the proxy, land on both nodes and are
    // always found again through it.
    const e = engine(lb);
    const sids = await Promise.all(Array.from({ length: 6 }, () => e.open()));
    for (const n of nodes) expect(sids.some((sid) => sid.startsWith(`${n.id}.`))).toBe(true);
    for (const sid of sids) {
      expect(await e.post(sid, "40")).toEqual([200, "ok"]);
      expect((await e.get(sid))[1]).toMatch(/^40\{"sid"/);
    }

    // Default options: the upgrade's WebSocket names the sid, so it reaches
    // the session's node as well (a few times, over both nodes).
    for (let i = 0; i < 4; i++) {
      const d = socket(`${lb}/feed`);
      await connected(d);
      await eventually("the upgrade through the proxy", () => d.io.engine.transport.name === "websocket");
      d.disconnect();
    }

    const s = socket(`${lb}/feed`, { transports: ["polling"] });
    const seqs: number[] = [];
    s.on("tick", (d: { seq: number }) => seqs.push(d.seq));
    await connected(s);
    expect(s.recovered).toBe(false);
    const home = nodes.find((n) => s.io.engine.id.startsWith(`${n.id}.`));
    const other = nodes.find((n) => n !== home);
    if (!home || !other) throw new Error(`sid ${s.io.engine.id} names no node`);
    const ticker = publishAtRate(other, "feed", 200);
    await eventually("events before the crash", () => seqs.length >= 50);
    home.kill("SIGKILL");
    await eventually("the disconnect", () => !s.connected);
    await eventually("the reconnect", () => s.connected, 30_000);
    expect(s.recovered).toBe(true);
    expect(s.io.engine.id.startsWith(`${other.id}.`)).toBe(true);
    await eventually("events after the reconnect", () => seqs.length >= ticker.sent() - 1 && ticker.sent() > 300, 30_000);
    const sent = await ticker.stop();
    await eventually("every event", () => seqs.at(-1) === sent);
    expect(seqs).toEqual(Array.from({ length: sent }, (_, i) => i + 1));
    // The dead node's sessions: "Session ID unknown" from the survivor, never a hang.
    const gone = sids.find((sid) => sid.startsWith(`${home.id}.`)) as string;
    expect(await e.get(gone)).toEqual([400, unknownSid]);
  });
});

/**
 * The WebSocket transport, opening its connection 600 ms late: the client
 * receives over polling for a while, then upgrades while publications keep
 * coming.
 */
class LateWebSocket extends NodeWebSocket {
  override doOpen(): this {
    setTimeout(() => super.doOpen(), 600);
    return this;
  }
}
