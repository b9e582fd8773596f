import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Backoff, Herald, type DisconnectedInfo, type MessageMeta } from "../../src/index.js";
import { FakeSocket } from "./fake-socket.js";

const WebSocket = FakeSocket;

/** A client on fake sockets with the top of every jitter range (predictable delays). */
function client(opts: ConstructorParameters<typeof Herald>[1] = {}, urls: string | string[] = "ws://a/ws") {
  return new Herald(urls, { WebSocket, random: () => 0.999, ...opts });
}

/** Collects (data, offset) of every publication on a channel. */
function collect(h: Herald, name: string) {
  const got: { data: unknown; meta: MessageMeta }[] = [];
  const ch = h.channel(name);
  ch.on("*", (data, meta) => got.push({ data, meta }));
  return { ch, got, offsets: () => got.map((g) => g.meta.offset) };
}

beforeEach(() => {
  FakeSocket.reset();
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("backoff", () => {
  it("grows exponentially with full jitter, is capped, and resets", () => {
    let r = 0.999;
    const b = new Backoff({ initialMs: 100, maxMs: 1000 }, () => r);
    expect([b.next(), b.next(), b.next(), b.next(), b.next()]).toEqual([99, 199, 399, 799, 999]);
    r = 0;
    expect(b.next()).toBe(0);
    b.reset();
    r = 0.5;
    expect(b.next()).toBe(50);
  });

  it("resets only after a connection stayed up for resetAfterMs", async () => {
    const h = client({ backoff: { initialMs: 1000, resetAfterMs: 5000 } });
    FakeSocket.last.accept().drop(1006);
    await vi.advanceTimersByTimeAsync(999); // first retry: up to 1 s
    FakeSocket.last.accept().drop(1006); // dropped at once: the bound doubles
    await vi.advanceTimersByTimeAsync(1500);
    expect(FakeSocket.all).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(500);
    expect(FakeSocket.all).toHaveLength(3);
    FakeSocket.last.accept();
    await vi.advanceTimersByTimeAsync(5000); // stable: back to the first bound
    FakeSocket.last.drop(1006);
    await vi.advanceTimersByTimeAsync(999);
    expect(FakeSocket.all).toHaveLength(4);
    h.disconnect();
  });
});

describe("close codes", () => {
  it("4000 (drain): reconnects within the drain window, to the next URL", async () => {
    const h = client({ drainWindowMs: 300 }, ["ws://a/ws", "ws://b/ws"]);
    FakeSocket.last.accept();
    FakeSocket.last.receive({ op: "disconnect", code: 4000, reason: "shutdown", reconnect: true }).drop(4000, "shutdown");
    expect(h.state).toBe("connecting");
    await vi.advanceTimersByTimeAsync(300);
    expect(FakeSocket.all.map((s) => s.url)).toEqual(["ws://a/ws", "ws://b/ws"]);
    h.disconnect();
  });

  it("4001-4499 and network drops reconnect with backoff; 4500+ stops and says why", async () => {
    const events: DisconnectedInfo[] = [];
    const h = client();
    h.on("disconnected", (d) => events.push(d));
    for (const code of [4001, 4002, 4004, 4499, 1006]) {
      FakeSocket.last.accept().drop(code);
      await vi.advanceTimersByTimeAsync(8_000); // the longest of these five waits, under connectTimeoutMs
    }
    expect(FakeSocket.all).toHaveLength(6);
    FakeSocket.last.accept();
    FakeSocket.last.receive({ op: "disconnect", code: 4502, reason: "protocol error", reconnect: false }).drop(4502, "protocol error");
    await vi.advanceTimersByTimeAsync(600_000);
    expect(FakeSocket.all).toHaveLength(6);
    expect(h.state).toBe("disconnected");
    expect(events.map((e) => [e.code, e.reconnect])).toEqual([
      [4001, true], [4002, true], [4004, true], [4499, true], [1006, true], [4502, false],
    ]);
    expect(events.at(-1)?.reason).toBe("protocol error");
  });

  it("4003: fetches a fresh token through getToken, then reconnects with it", async () => {
    let n = 0;
    const getToken = vi.fn(async () => `jwt-${++n}`);
    const h = client({ getToken });
    await vi.advanceTimersByTimeAsync(0);
    expect(FakeSocket.last.accept().lastSent("connect").token).toBe("jwt-1");
    FakeSocket.last.drop(1006); // an ordinary drop keeps the token
    await vi.advanceTimersByTimeAsync(1000);
    expect(FakeSocket.last.accept().lastSent("connect").token).toBe("jwt-1");
    FakeSocket.last.receive({ op: "disconnect", code: 4003, reason: "token expired", reconnect: true }).drop(4003);
    await vi.advanceTimersByTimeAsync(1000);
    expect(FakeSocket.last.accept().lastSent("connect").token).toBe("jwt-2");
    expect(getToken).toHaveBeenCalledTimes(2);
    h.disconnect();
  });

  it("4003 without getToken stops: the same token would be refused again", async () => {
    const h = client({ token: "old" });
    FakeSocket.last.accept().drop(4003, "token expired");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeSocket.all).toHaveLength(1);
    expect(h.state).toBe("disconnected");
  });
});

describe("resume", () => {
  it("resumes with the latest reconnect token and every channel's position", async () => {
    const h = client();
    const news = collect(h, "news");
    const s = FakeSocket.last.accept();
    s.subscribed("news", "E", 4, { reconnect_token: "rt-2" });
    s.message("news", 5).message("news", 6);
    s.receive({ op: "token", reconnect_token: "rt-3" });
    s.drop(1006);
    await vi.advanceTimersByTimeAsync(1000);
    const c = FakeSocket.last.open().lastSent("connect");
    expect(c.resume).toBe("rt-3");
    expect(c.positions).toEqual({ news: { epoch: "E", offset: 6 } });
    FakeSocket.last.receive({
      op: "connected", id: c.id, session: "s1", node: "n2", ping_interval_ms: 25000, resumed: true,
      channels: { news: { epoch: "E", offset: 8, recovered: true } }, reconnect_token: "rt-4",
    });
    FakeSocket.last.message("news", 7).message("news", 8).message("news", 9);
    expect(FakeSocket.last.ops("subscribe")).toHaveLength(0);
    expect(news.offsets()).toEqual([5, 6, 7, 8, 9]);
    expect(news.ch.state).toBe("subscribed");
    h.disconnect();
  });

  it("a refused resume subscribes every channel again with since", async () => {
    const h = client();
    const news = collect(h, "news");
    collect(h, "fresh");
    const s = FakeSocket.last.accept();
    s.subscribed("news", "E", 4).message("news", 5);
    s.drop(1006);
    await vi.advanceTimersByTimeAsync(1000);
    const n = FakeSocket.last.accept({ resumed: false, session: "s2" });
    const subs = n.ops("subscribe");
    expect(subs.map((f) => [f.channel, f.since])).toEqual([
      ["news", { epoch: "E", offset: 5 }],
      ["fresh", undefined],
    ]);
    n.subscribed("news", "E", 7, { recovered: true }).message("news", 6).message("news", 7);
    expect(news.offsets()).toEqual([5, 6, 7]);
    h.disconnect();
  });

  it("recovered: false fires unrecovered, then continues from the new position", async () => {
    const h = client();
    const news = collect(h, "news");
    const lost: unknown[] = [];
    news.ch.onUnrecovered((u) => lost.push(u));
    FakeSocket.last.accept().subscribed("news", "E", 1).message("news", 2);
    FakeSocket.last.drop(1006);
    await vi.advanceTimersByTimeAsync(1000);
    const c = FakeSocket.last.open().lastSent("connect");
    FakeSocket.last.receive({
      op: "connected", id: c.id, session: "s1", node: "n1", ping_interval_ms: 25000, resumed: true,
      channels: { news: { epoch: "F", offset: 40, recovered: false } },
    });
    FakeSocket.last.message("news", 41, 41, "F");
    expect(lost).toEqual([{ lost: { epoch: "E", offset: 2 }, now: { epoch: "F", offset: 40 } }]);
    expect(news.offsets()).toEqual([2, 41]);
    h.disconnect();
  });

  it("never hands the app a duplicate; a gap makes it resume from its position", async () => {
    const h = client();
    const news = collect(h, "news");
    const s = FakeSocket.last.accept();
    s.subscribed("news", "E", 0);
    s.message("news", 1).message("news", 2).message("news", 2).message("news", 1).message("news", 3);
    expect(news.offsets()).toEqual([1, 2, 3]);
    s.message("news", 5); // 4 is missing
    expect(news.offsets()).toEqual([1, 2, 3]);
    expect(s.closedByClient).toBeDefined();
    await vi.advanceTimersByTimeAsync(1000);
    expect(FakeSocket.last.open().lastSent("connect").positions).toEqual({ news: { epoch: "E", offset: 3 } });
    h.disconnect();
  });

  it("a channel refused on resume reports the error; unavailable retries with since", async () => {
    const h = client();
    const a = collect(h, "a");
    const b = collect(h, "b");
    const errors: string[] = [];
    a.ch.onError((e) => errors.push(`a:${e.code}`));
    b.ch.onError((e) => errors.push(`b:${e.code}`));
    const s = FakeSocket.last.accept();
    s.subscribed("a", "E", 3).subscribed("b", "E", 3);
    s.drop(1006);
    await vi.advanceTimersByTimeAsync(1000);
    const c = FakeSocket.last.open().lastSent("connect");
    FakeSocket.last.receive({
      op: "connected", id: c.id, session: "s1", node: "n1", ping_interval_ms: 25000, resumed: true,
      channels: {
        a: { error: { code: "forbidden", message: "no" } },
        b: { error: { code: "unavailable", message: "redis down" } },
      },
    });
    expect(errors).toEqual(["a:forbidden", "b:unavailable"]);
    expect(a.ch.state).toBe("unsubscribed");
    expect(b.ch.state).toBe("subscribing");
    await vi.advanceTimersByTimeAsync(3000);
    expect(FakeSocket.last.lastSent("subscribe")).toMatchObject({ channel: "b", since: { epoch: "E", offset: 3 } });
    h.disconnect();
  });
});

describe("subscriptions", () => {
  it("ready() resolves once subscribed, and rejects with the server's code when refused", async () => {
    const h = client();
    const ok = h.channel("news").ready();
    const refused = h.channel("inbox#42").ready();
    const s = FakeSocket.last.accept();
    s.subscribed("news", "E", 0);
    const sub = s.sent.find((f) => f.op === "subscribe" && f.channel === "inbox#42");
    s.receive({ op: "error", id: sub?.id, code: "forbidden", message: "not yours", channel: "inbox#42" });
    await expect(ok).resolves.toBeUndefined();
    await expect(refused).rejects.toMatchObject({ code: "forbidden", channel: "inbox#42" });
    expect(h.channel("news").state).toBe("subscribed");
    h.disconnect();
  });
});

describe("liveness", () => {
  it("answers pings, and takes silence past ping interval + grace as a dead connection", async () => {
    const h = client({ pingGraceMs: 2000 });
    const s = FakeSocket.last.accept({ ping_interval_ms: 5000 });
    await vi.advanceTimersByTimeAsync(4000);
    s.receive({ op: "ping" });
    expect(s.ops("pong")).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(6900);
    expect(FakeSocket.all).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(200);
    expect(s.closedByClient).toBeDefined();
    await vi.advanceTimersByTimeAsync(1000);
    expect(FakeSocket.all).toHaveLength(2);
    h.disconnect();
  });

  it("gives up on a connection that does not get connected in time, and rotates URLs", async () => {
    const h = client({ connectTimeoutMs: 3000 }, ["ws://a/ws", "ws://b/ws", "ws://c/ws"]);
    FakeSocket.last.open(); // upgrade done, but no connected reply
    await vi.advanceTimersByTimeAsync(3000 + 1000);
    FakeSocket.last.drop(1006); // refused outright
    await vi.advanceTimersByTimeAsync(2000);
    expect(FakeSocket.all.map((s) => s.url)).toEqual(["ws://a/ws", "ws://b/ws", "ws://c/ws"]);
    h.disconnect();
  });

  it("refreshes the token before expires_at through getToken", async () => {
    vi.setSystemTime(1_000_000_000_000);
    let n = 0;
    const h = client({ getToken: () => `jwt-${++n}`, refreshMarginMs: 30_000, pingGraceMs: 1e9 });
    await vi.advanceTimersByTimeAsync(0);
    const s = FakeSocket.last.accept({ expires_at: 1_000_000_000 + 300 });
    await vi.advanceTimersByTimeAsync(269_000);
    expect(s.ops("refresh")).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(s.lastSent("refresh").token).toBe("jwt-2");
    s.receive({ op: "refreshed", id: s.lastSent("refresh").id, expires_at: 1_000_000_000 + 600 });
    await vi.advanceTimersByTimeAsync(301_000);
    expect(s.lastSent("refresh").token).toBe("jwt-3");
    h.disconnect();
  });

  it("reconnects at once when the browser says it is online again", async () => {
    const target = new EventTarget();
    const g = globalThis as unknown as { addEventListener?: unknown; removeEventListener?: unknown };
    g.addEventListener = target.addEventListener.bind(target);
    g.removeEventListener = target.removeEventListener.bind(target);
    try {
      const h = client({ backoff: { initialMs: 60_000 } });
      FakeSocket.last.accept().drop(1006);
      await vi.advanceTimersByTimeAsync(10);
      expect(FakeSocket.all).toHaveLength(1);
      target.dispatchEvent(new Event("online"));
      await vi.advanceTimersByTimeAsync(0);
      expect(FakeSocket.all).toHaveLength(2);
      h.disconnect();
    } finally {
      delete g.addEventListener;
      delete g.removeEventListener;
    }
  });
});

describe("emit and state", () => {
  it("emit resolves with the offset, rejects with the server's code, and waits for a connection", async () => {
    const h = client();
    const pending = h.channel("chat").emit("said", { text: "hi" });
    const s = FakeSocket.last.accept();
    const e = s.lastSent("emit");
    expect(e).toMatchObject({ channel: "chat", event: "said", data: { text: "hi" } });
    s.receive({ op: "emitted", id: e.id, channel: "chat", epoch: "E", offset: 12 });
    await expect(pending).resolves.toBe(12);
    const refused = h.emit("chat", "said", 1);
    s.receive({ op: "error", id: s.lastSent("emit").id, code: "forbidden", message: "no", channel: "chat" });
    await expect(refused).rejects.toMatchObject({ code: "forbidden", channel: "chat" });
    const lost = h.emit("chat", "said", 2);
    s.drop(1006);
    await expect(lost).rejects.toMatchObject({ code: "disconnected" });
    h.disconnect();
    await expect(h.emit("chat", "x", 1)).rejects.toMatchObject({ code: "closed" });
  });

  it("reports state changes in order and stops on disconnect()", async () => {
    const states: string[] = [];
    const h = client({ autoConnect: false });
    h.on("state", (s) => states.push(s));
    h.connect();
    FakeSocket.last.accept();
    h.disconnect();
    expect(FakeSocket.last.closedByClient?.code).toBe(1000);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeSocket.all).toHaveLength(1);
    expect(states).toEqual(["connecting", "connected", "disconnected"]);
  });

  it("unsubscribe stops delivery; a channel unsubscribed while offline is dropped on resume", async () => {
    const h = client();
    const news = collect(h, "news");
    const s = FakeSocket.last.accept().subscribed("news", "E", 0).message("news", 1);
    s.drop(1006);
    news.ch.unsubscribe();
    await vi.advanceTimersByTimeAsync(1000);
    const c = FakeSocket.last.open().lastSent("connect");
    FakeSocket.last.receive({
      op: "connected", id: c.id, session: "s1", node: "n1", ping_interval_ms: 25000, resumed: true,
      channels: { news: { epoch: "E", offset: 3, recovered: false } },
    });
    expect(FakeSocket.last.lastSent("unsubscribe").channel).toBe("news");
    FakeSocket.last.message("news", 4);
    expect(news.offsets()).toEqual([1]);
    h.disconnect();
  });

  it("accepts http URLs and points them at /ws", () => {
    const h = client({ autoConnect: false }, "http://localhost:8080");
    expect(h.url).toBe("ws://localhost:8080/ws");
    expect(client({ autoConnect: false }, "https://h.example/").url).toBe("wss://h.example/ws");
  });
});
