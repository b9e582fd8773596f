// The client against real `herald` processes and a real `redis-server`.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { afterEach, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { Herald, type ConnectedInfo, type DisconnectedInfo, type Unrecovered } from "../../src/index.js";
import { eventually, jwt, publish, publishAtRate, startNode, startRedis, stopAll, type Node } from "../harness.js";

afterEach(stopAll);

/** A client on `urls` subscribed to `channel`, recording every publication. */
function recorder(urls: string[], channel: string, opts: ConstructorParameters<typeof Herald>[1] = {}) {
  const herald = new Herald(urls, { WebSocket, backoff: { initialMs: 200 }, ...opts });
  const seqs: number[] = [];
  const offsets: number[] = [];
  const connected: ConnectedInfo[] = [];
  const disconnected: DisconnectedInfo[] = [];
  herald.on("connected", (i) => connected.push(i));
  herald.on("disconnected", (d) => disconnected.push(d));
  const ch = herald.channel(channel);
  ch.on<{ seq: number }>("tick", (d, meta) => {
    seqs.push(d.seq);
    offsets.push(meta.offset);
  });
  return { herald, ch, seqs, offsets, connected, disconnected };
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

describe("failover between real nodes", () => {
  for (const [signal, code] of [["SIGKILL", 1006], ["SIGTERM", 4000]] as const) {
    it(`${signal} of the client's node while publishing at 200/s: every publication once, in order`, async () => {
      const redis = await startRedis();
      // History must cover the time offline: at 200/s, the default 100
      // publications are 0.5 s, less than the client's 1 s drain window.
      const history = ["--history-size", "1000"];
      const a = await startNode(["--redis-url", redis.url, "--drain-timeout", "2s", ...history]);
      const b = await startNode(["--redis-url", redis.url, ...history]);
      const r = recorder([a.ws, b.ws], "ticker");
      const unrecovered: Unrecovered[] = [];
      r.ch.onUnrecovered((u) => unrecovered.push(u));
      await r.ch.ready();
      expect(r.connected[0]?.node).toBe(a.id);
      const publisher = publishAtRate(b, "ticker", 200);
      await eventually("deliveries before the kill", () => r.seqs.length >= 150);
      a.kill(signal);
      await eventually("resumed on the other node", () => r.connected.at(-1)?.node === b.id);
      const resumedAt = publisher.sent();
      await eventually("live publications after the resume", () => publisher.sent() >= resumedAt + 200);
      const total = await publisher.stop();
      await eventually(`all ${total} publications`, () => r.seqs.length >= total);
      expect(unrecovered).toEqual([]);
      expect(r.seqs).toEqual(range(total));
      expect(r.offsets).toEqual(r.offsets.map((_, i) => (r.offsets[0] as number) + i));
      expect(r.disconnected[0]?.code).toBe(code);
      expect(r.connected.at(-1)).toMatchObject({ node: b.id, resumed: true });
      r.herald.disconnect();
    });
  }
});

describe("tokens", () => {
  const secret = "test-secret-0123456789abcdef0123456789";

  async function authNode(): Promise<Node> {
    const dir = mkdtempSync(`${tmpdir()}/herald-js-`);
    writeFileSync(`${dir}/herald.toml`, `[auth]\njwt_secret = "${secret}"\nleeway = "1s"\n`);
    return startNode(["--config", `${dir}/herald.toml`]);
  }

  it("an expired token (4003) is replaced through getToken, and refresh keeps the connection past exp", async () => {
    const node = await authNode();
    const now = () => Math.floor(Date.now() / 1000);
    let calls = 0;
    // The first token is already expired: the node refuses it with 4003.
    const getToken = () => jwt(secret, { sub: "42", exp: calls++ === 0 ? now() - 60 : now() + 2 });
    const r = recorder([node.ws], "news", { getToken });
    await r.ch.ready();
    expect(r.disconnected[0]?.code).toBe(4003);
    expect(r.connected[0]?.user).toBe("42");
    const firstExpiry = now() + 2 + 1; // exp + leeway of the token it connected with
    await eventually("two refreshes", () => calls >= 4);
    await eventually("past the first token's expiry", () => now() > firstExpiry + 1);
    await publish(node, "news", "tick", { seq: 1 });
    await eventually("a delivery on the same connection", () => r.seqs.length === 1);
    expect(r.disconnected).toHaveLength(1);
    expect(r.connected).toHaveLength(1);
    r.herald.disconnect();
  });

  it("a 4500-range close stops reconnecting and says why", async () => {
    const node = await authNode();
    let sockets = 0;
    class Counting extends WebSocket {
      constructor(url: string) {
        super(url);
        sockets++;
      }
    }
    const herald = new Herald(node.ws, { WebSocket: Counting, token: jwt("wrong-secret-wrong-secret-wrong!!", { sub: "1", exp: 9999999999 }), backoff: { initialMs: 10 } });
    const closed = new Promise<DisconnectedInfo>((resolve) => herald.on("disconnected", resolve));
    expect(await closed).toMatchObject({ code: 4500, reconnect: false, reason: "unauthorized" });
    expect(herald.state).toBe("disconnected");
    // With a 10 ms backoff, a client that retried would have opened dozens of sockets by now.
    await new Promise((r) => setTimeout(r, 500));
    expect(sockets).toBe(1);
  });
});

describe("history", () => {
  it("a resume after the history TTL gives unrecovered, then live publications continue", async () => {
    const node = await startNode(["--history-ttl", "1s", "--reconnect-ttl", "1s"]);
    const r = recorder([node.ws], "feed");
    const lost: Unrecovered[] = [];
    r.ch.onUnrecovered((u) => lost.push(u));
    await r.ch.ready();
    for (const seq of [1, 2, 3]) await publish(node, "feed", "tick", { seq });
    await eventually("three deliveries", () => r.seqs.length === 3);
    const seen = r.ch.position;
    r.herald.disconnect();
    await publish(node, "feed", "tick", { seq: 4 });
    // Wait until the node itself says the gap can no longer be replayed.
    const probe = async () => {
      const ws = new WebSocket(node.ws);
      const replies: Record<string, unknown>[] = [];
      ws.on("message", (d) => replies.push(JSON.parse(d.toString()) as Record<string, unknown>));
      await new Promise((res) => ws.on("open", res));
      ws.send(JSON.stringify({ op: "connect", id: 1 }));
      ws.send(JSON.stringify({ op: "subscribe", id: 2, channel: "feed", since: seen }));
      await eventually("probe reply", () => replies.some((f) => f.op === "subscribed"));
      ws.close();
      return replies.find((f) => f.op === "subscribed")?.recovered === false;
    };
    let expired = false;
    while (!expired) expired = await probe();
    r.herald.connect();
    await eventually("unrecovered", () => lost.length === 1);
    expect(lost[0]?.lost).toEqual(seen);
    await publish(node, "feed", "tick", { seq: 5 });
    await eventually("live delivery after unrecovered", () => r.seqs.length === 4);
    expect(r.seqs).toEqual([1, 2, 3, 5]);
    r.herald.disconnect();
  });
});
