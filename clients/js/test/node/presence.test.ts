// Presence and join/leave through the SDK and the unmodified npm
// `socket.io-client`, on two real `herald` nodes sharing a real Redis.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { io, type Socket } from "socket.io-client";
import { afterEach, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { Herald, type PresenceClient } from "../../src/index.js";
import { eventually, startNode, startRedis, stopAll } from "../harness.js";
import { connected } from "../socketio/sockets.js";

const clients: Herald[] = [];
const sockets: Socket[] = [];

afterEach(() => {
  for (const c of clients.splice(0)) c.disconnect();
  for (const s of sockets.splice(0)) s.disconnect();
  stopAll();
});

/** Two nodes on one Redis; namespace `room` keeps presence with join/leave. */
async function cluster() {
  const dir = mkdtempSync(`${tmpdir()}/herald-presence-`);
  const cfg = `${dir}/herald.toml`;
  writeFileSync(cfg, '[presence]\nheartbeat = "1s"\n[namespaces.room]\npresence = true\njoin_leave = true\n');
  const redis = await startRedis();
  const args = ["--config", cfg, "--redis-url", redis.url];
  return [await startNode(args), await startNode(args)] as const;
}

function client(url: string): Herald {
  const h = new Herald(url, { WebSocket: WebSocket as never });
  clients.push(h);
  return h;
}

describe("presence", () => {
  it("the SDK lists who is in a channel on every node and hears joins and leaves", async () => {
    const [a, b] = await cluster();
    const ada = client(a.ws);
    const room = ada.channel("room:7");
    const joins: PresenceClient[] = [];
    const leaves: PresenceClient[] = [];
    room.onJoin((c) => joins.push(c));
    room.onLeave((c) => leaves.push(c));
    await room.ready();
    const bob = client(b.ws);
    const bobRoom = bob.channel("room:7");
    await bobRoom.ready();
    await eventually("ada hears bob join", () => joins.length === 1);
    expect(joins[0]?.node).toBe(b.id);
    const list = await room.presence();
    expect(list.map((c) => c.node).sort()).toEqual([a.id, b.id].sort());
    expect(await ada.presenceStats("room:7")).toEqual({ clients: 2, users: 1 });
    bobRoom.unsubscribe();
    await eventually("ada hears bob leave", () => leaves.length === 1);
    expect(leaves[0]?.session).toBe(joins[0]?.session);
    expect((await room.presence()).length).toBe(1);
    // Outside presence namespaces: a clear refusal.
    await expect(ada.presence("news")).rejects.toMatchObject({ code: "bad_request" });
  });

  it("socket.io-client asks with an ack and gets herald:join / herald:leave events", async () => {
    const [a, b] = await cluster();
    const opts = { transports: ["websocket"], forceNew: true };
    const s1 = io(`${a.http}/room:9`, opts);
    sockets.push(s1);
    const joins: PresenceClient[] = [];
    const leaves: PresenceClient[] = [];
    s1.on("herald:join", (c: PresenceClient) => joins.push(c));
    s1.on("herald:leave", (c: PresenceClient) => leaves.push(c));
    await connected(s1);
    const s2 = io(`${b.http}/room:9`, opts);
    sockets.push(s2);
    await connected(s2);
    await eventually("s1 hears s2 join", () => joins.length === 1);
    const list = (await s1.timeout(5000).emitWithAck("herald:presence")) as PresenceClient[];
    expect(list.length).toBe(2);
    expect(list.map((c) => c.node).sort()).toEqual([a.id, b.id].sort());
    expect(await s2.timeout(5000).emitWithAck("herald:presence_stats")).toEqual({ clients: 2, users: 1 });
    s2.disconnect();
    await eventually("s1 hears s2 leave", () => leaves.length === 1);
    expect(leaves[0]?.session).toBe(joins[0]?.session);
  });
});
