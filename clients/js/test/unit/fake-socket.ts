// A scripted stand-in for the server side of a WebSocket, for unit tests of
// the client's state machine. Tests against real nodes are in test/node/.
import type { WebSocketLike } from "../../src/client.js";

export class FakeSocket implements WebSocketLike {
  static all: FakeSocket[] = [];
  readyState = 0;
  sent: Record<string, unknown>[] = [];
  closedByClient: { code?: number; reason?: string } | undefined;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;

  constructor(readonly url: string) {
    FakeSocket.all.push(this);
  }

  static reset(): void {
    FakeSocket.all = [];
  }

  static get last(): FakeSocket {
    const s = FakeSocket.all[FakeSocket.all.length - 1];
    if (!s) throw new Error("no socket was opened");
    return s;
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  /** The server side accepts the upgrade. */
  open(): this {
    this.readyState = 1;
    this.onopen?.({});
    return this;
  }

  /** The server sends one frame. */
  receive(frame: Record<string, unknown>): this {
    this.onmessage?.({ data: JSON.stringify(frame) });
    return this;
  }

  /** The server (or the network) closes the socket. */
  drop(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Frames sent with this op. */
  ops(op: string): Record<string, unknown>[] {
    return this.sent.filter((f) => f.op === op);
  }

  lastSent(op: string): Record<string, unknown> {
    const f = this.ops(op).at(-1);
    if (!f) throw new Error(`no ${op} frame sent; sent: ${JSON.stringify(this.sent)}`);
    return f;
  }

  /** Opens and answers `connect` like a node would. */
  accept(extra: Record<string, unknown> = {}): this {
    this.open();
    const c = this.lastSent("connect");
    return this.receive({ op: "connected", id: c.id, session: "s1", node: "n1", ping_interval_ms: 25000, reconnect_token: "rt-1", ...extra });
  }

  /** Answers the last subscribe to `channel`. */
  subscribed(channel: string, epoch: string, offset: number, extra: Record<string, unknown> = {}): this {
    const s = this.sent.filter((f) => f.op === "subscribe" && f.channel === channel).at(-1);
    if (!s) throw new Error(`no subscribe to ${channel}`);
    return this.receive({ op: "subscribed", id: s.id, channel, epoch, offset, ...extra });
  }

  message(channel: string, offset: number, data: unknown = offset, epoch = "E", event = "ev"): this {
    return this.receive({ op: "message", channel, event, data, epoch, offset });
  }
}
