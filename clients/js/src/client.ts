import { Backoff, type BackoffOptions } from "./backoff.js";
import { Channel, type ChannelHost, type ChannelOptions } from "./channel.js";
import { Emitter } from "./emitter.js";
import { HeraldError } from "./errors.js";
import type { Command, PresenceClient, ResumedChannel, ServerFrame, Since } from "./protocol.gen.js";

/**
 * The part of the WebSocket API the client uses: the browser's `WebSocket`
 * and the `ws` package's both fit. The handler properties are typed loosely
 * so that either library's event types are accepted.
 */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: unknown;
  onmessage: unknown;
  onclose: unknown;
  onerror: unknown;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** How the client drives a socket. */
interface Socket {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** Options of `new Herald(url, options)`. Every field is optional. */
export interface HeraldOptions {
  /** A connection JWT, when the node has authentication and the token is fixed. */
  token?: string;
  /**
   * Fetches a fresh connection JWT from your backend. Called before the first
   * connect (when `token` is not given), after the server says the token
   * expired (close 4003), and ahead of `expires_at` to `refresh` the live
   * connection.
   */
  getToken?: () => string | Promise<string>;
  /** The WebSocket class, where there is no global one (Node < 22: `import WebSocket from "ws"`). */
  WebSocket?: WebSocketConstructor;
  /** Connect at once (default) or wait for `connect()`. */
  autoConnect?: boolean;
  /** Reconnect delays; see `BackoffOptions`. */
  backoff?: BackoffOptions;
  /** After a drain (close 4000), reconnect within a random delay up to this (ms). Default 1,000. */
  drainWindowMs?: number;
  /** With no frame for `ping_interval_ms` plus this (ms), the connection is taken as dead. Default 10,000. */
  pingGraceMs?: number;
  /** Give up on a connection attempt that is not `connected` after this (ms). Default 10,000. */
  connectTimeoutMs?: number;
  /** Reject an `emit` with no answer after this (ms), including time spent waiting for a connection. Default 10,000. */
  requestTimeoutMs?: number;
  /** Refresh the connection token this long (ms) before it expires (at most half its remaining life). Default 60,000. */
  refreshMarginMs?: number;
  /** Random numbers in [0, 1) for jitter; tests make it predictable. */
  random?: () => number;
}

/** The connection's state. */
export type ConnectionState = "disconnected" | "connecting" | "connected";

/** Told to `connected` listeners. */
export interface ConnectedInfo {
  session: string;
  node: string;
  /** The session was resumed: channels and missed publications came back. */
  resumed: boolean;
  user: string | undefined;
  url: string;
}

/** Told to `disconnected` listeners. */
export interface DisconnectedInfo {
  /** The close code: 4000–4499 and network codes (1006) reconnect; 4500+ and your own `disconnect()` do not. */
  code: number;
  reason: string;
  /** Whether the client reconnects by itself. */
  reconnect: boolean;
}

export type HeraldEvents = {
  state: (state: ConnectionState) => void;
  connected: (info: ConnectedInfo) => void;
  disconnected: (info: DisconnectedInfo) => void;
  /** Something went wrong that the client handles by itself: logged, not thrown. */
  error: (err: Error) => void;
};

/** A client-side close code for connections the client gave up on (no frame, no `connected` in time, a gap). */
export const ABANDONED = 4999 as const;

interface Pending {
  /** Each request resolves with its own answer type. */
  resolve: (value: any) => void;
  reject: (err: HeraldError) => void;
  timer: ReturnType<typeof setTimeout>;
  channel?: string;
}

interface Connection {
  ws: Socket;
  url: string;
  connectId: number;
  /** Channels and whether their subscribe carried `since`, by request id. */
  subscribing: Map<number, { channel: Channel; since: boolean }>;
  /** Set from the server's `disconnect` frame, which comes just before the close. */
  goodbye?: { code: number; reason: string };
  opened: boolean;
  connected: boolean;
}

const OPEN = 1;

/**
 * A connection to a Herald cluster that survives node crashes: it reconnects
 * with backoff, resumes its session on any node, and replays what each
 * channel missed, so the app sees every publication once and in order.
 *
 * ```ts
 * const herald = new Herald("ws://localhost:8080/ws");
 * herald.channel("reviews").on("review_added", (review, meta) => render(review));
 * ```
 */
export class Herald extends Emitter<HeraldEvents> {
  private readonly urls: string[];
  private urlIndex = 0;
  private readonly opts: HeraldOptions;
  private readonly WS: WebSocketConstructor;
  private readonly backoff: Backoff;
  private readonly random: () => number;
  private readonly channelMap = new Map<string, Channel>();
  private readonly pending = new Map<number, Pending>();
  /** Emits waiting for a connection: how to send each, and how to fail it. */
  private readonly waiting = new Map<() => void, (err: HeraldError) => void>();
  private conn: Connection | undefined;
  private stateValue: ConnectionState = "disconnected";
  private nextId = 1;
  private running = false;
  private token: string | undefined;
  private tokenStale: boolean;
  private reconnectToken: string | undefined;
  private expiresAt: number | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private timers: ReturnType<typeof setTimeout>[] = [];
  private livenessTimer: ReturnType<typeof setTimeout> | undefined;
  private pingIntervalMs = 25_000;
  /** The positions sent with the last resume: which restored channels asked to recover. */
  private lastPositions: Record<string, Since> | undefined;
  private readonly onOnline = () => this.reconnectNow();
  private readonly host: ChannelHost;

  /**
   * Where `new Herald()` connects without a URL: the browser bundle sets it
   * to the origin it was loaded from (`<script src="https://node/herald.js">`).
   */
  static defaultUrl: string | undefined;

  constructor(url?: string | string[], options: HeraldOptions = {}) {
    super();
    const given = url ?? Herald.defaultUrl;
    const list = (given === undefined ? [] : Array.isArray(given) ? given : [given]).map(wsUrl);
    if (list.length === 0) throw new TypeError("Herald needs at least one URL");
    this.urls = list;
    this.opts = options;
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) {
      throw new TypeError(
        "no global WebSocket: pass one, e.g. new Herald(url, { WebSocket }) with `import WebSocket from \"ws\"`",
      );
    }
    this.WS = WS;
    this.random = options.random ?? Math.random;
    this.backoff = new Backoff(options.backoff, this.random);
    this.token = options.token;
    this.tokenStale = options.token === undefined && options.getToken !== undefined;
    this.host = {
      requestSubscribe: (ch) => this.subscribe(ch),
      requestUnsubscribe: (ch) => this.unsubscribe(ch),
      emitOn: (ch, ev, data) => this.emit(ch, ev, data),
      presenceOf: (ch) => this.presence(ch),
      resync: (why) => this.abandon(why),
      report: (err) => this.report(err),
      retryLater: (ch) => this.later(() => this.subscribe(ch), 500 + this.random() * 2000),
    };
    if (options.autoConnect !== false) this.connect();
  }

  /** `disconnected`, `connecting` (including waits between attempts) or `connected`. */
  get state(): ConnectionState {
    return this.stateValue;
  }

  /** The URL of the current (or next) connection attempt. */
  get url(): string {
    return this.urls[this.urlIndex] as string;
  }

  /**
   * The channel called `name`, subscribed from now on until `unsubscribe()`.
   * Calling it again returns the same object.
   */
  channel(name: string, options?: ChannelOptions): Channel {
    let ch = this.channelMap.get(name);
    if (ch?.isWanted) return ch;
    ch = new Channel(name, this.host, options);
    this.channelMap.set(name, ch);
    this.subscribe(ch);
    return ch;
  }

  /** Every channel this client is subscribed to (or subscribing). */
  channels(): Channel[] {
    return [...this.channelMap.values()];
  }

  /**
   * Publishes `data` as `event` on `channel` (no subscription needed).
   * Resolves with the publication's offset; rejects with a `HeraldError`.
   * While disconnected it waits for the connection, up to `requestTimeoutMs`.
   */
  emit(channel: string, event: string, data?: unknown): Promise<number> {
    return this.request<number>(channel, "emit", (id) => ({ op: "emit", id, channel, event, data: data ?? null }));
  }

  /**
   * Everyone subscribed to `channel` right now, on every node (channels
   * whose namespace keeps presence). Rejects with a `HeraldError` elsewhere.
   */
  presence(channel: string): Promise<PresenceClient[]> {
    return this.request<PresenceClient[]>(channel, "presence", (id) => ({ op: "presence", id, channel }));
  }

  /** How many connections and distinct users are subscribed to `channel`. */
  presenceStats(channel: string): Promise<{ clients: number; users: number }> {
    return this.request(channel, "presence_stats", (id) => ({ op: "presence_stats", id, channel }));
  }

  /** Sends a command with a fresh id once connected; settles with its answer. */
  private request<T>(channel: string, what: string, frame: (id: number) => Command): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const deadline = setTimeout(() => {
        this.waiting.delete(send);
        reject(new HeraldError("timeout", `no answer to ${what} on ${channel} within ${this.requestTimeoutMs} ms`, channel));
      }, this.requestTimeoutMs);
      const send = () => {
        const id = this.nextId++;
        this.pending.set(id, { resolve, reject, timer: deadline, channel });
        this.send(frame(id));
      };
      if (!this.running) {
        clearTimeout(deadline);
        reject(new HeraldError("closed", "the client is disconnected: call connect() first", channel));
      } else if (this.conn?.connected) {
        send();
      } else {
        this.waiting.set(send, (err) => {
          clearTimeout(deadline);
          reject(err);
        });
      }
    });
  }

  /** Starts connecting (again after `disconnect()` or a 4500-range close). */
  connect(): void {
    if (this.running) return;
    this.running = true;
    this.backoff.reset();
    globalThis.addEventListener?.("online", this.onOnline);
    void this.open();
  }

  /** Closes the connection and stops reconnecting. Channels are kept for the next `connect()`. */
  disconnect(): void {
    this.stop({ code: 1000, reason: "client disconnected", reconnect: false }, "closed");
  }

  // ---- connection lifecycle ----

  private get requestTimeoutMs(): number {
    return this.opts.requestTimeoutMs ?? 10_000;
  }

  private async open(): Promise<void> {
    this.setState("connecting");
    this.retryTimer = undefined;
    if (this.opts.getToken && (this.tokenStale || this.tokenExpiring())) {
      try {
        this.token = await this.opts.getToken();
        this.tokenStale = false;
      } catch (err) {
        this.report(new Error(`getToken failed: ${String(err)}`));
        if (this.running) this.scheduleRetry(this.backoff.next());
        return;
      }
      if (!this.running || this.conn) return;
    }
    const url = this.url;
    let ws: Socket;
    try {
      ws = new this.WS(url) as Socket;
    } catch (err) {
      this.report(err);
      this.rotate();
      this.scheduleRetry(this.backoff.next());
      return;
    }
    const conn: Connection = { ws, url, connectId: this.nextId++, subscribing: new Map(), opened: false, connected: false };
    this.conn = conn;
    const connectTimer = setTimeout(
      () => this.abandon(`not connected within ${this.opts.connectTimeoutMs ?? 10_000} ms`),
      this.opts.connectTimeoutMs ?? 10_000,
    );
    ws.onopen = () => {
      if (this.conn !== conn) return;
      conn.opened = true;
      const frame: Command = { op: "connect", id: conn.connectId };
      if (this.token !== undefined) frame.token = this.token;
      if (this.reconnectToken !== undefined) {
        frame.resume = this.reconnectToken;
        frame.positions = this.positions();
      }
      this.send(frame);
    };
    ws.onmessage = (ev) => {
      if (this.conn !== conn) return;
      let frame: ServerFrame;
      try {
        frame = JSON.parse(typeof ev.data === "string" ? ev.data : String(ev.data)) as ServerFrame;
      } catch {
        this.report(new Error("the server sent a frame that is not JSON"));
        return;
      }
      if (frame.op === "connected") clearTimeout(connectTimer);
      this.handle(conn, frame);
    };
    ws.onclose = (ev) => {
      clearTimeout(connectTimer);
      if (this.conn !== conn) return;
      const code = conn.goodbye?.code ?? ev.code;
      const reason = conn.goodbye?.reason ?? ev.reason;
      this.closed(code, reason || (conn.opened ? "connection closed" : `could not connect to ${url}`));
    };
    ws.onerror = () => {
      // A close event follows; it carries what there is to know.
    };
  }

  /** Every frame of the live connection, in arrival order. */
  private handle(conn: Connection, f: ServerFrame): void {
    if (conn.connected) this.armLiveness();
    switch (f.op) {
      case "connected": {
        conn.connected = true;
        this.pingIntervalMs = f.ping_interval_ms;
        this.expiresAt = f.expires_at;
        if (f.reconnect_token !== undefined) this.reconnectToken = f.reconnect_token;
        this.armLiveness();
        this.scheduleRefresh();
        this.later(() => {
          if (this.conn === conn) this.backoff.reset();
        }, this.backoff.resetAfterMs);
        this.restore(conn, f.resumed === true ? f.channels ?? {} : undefined);
        this.setState("connected");
        this.fire("connected", { session: f.session, node: f.node, resumed: f.resumed === true, user: f.user, url: conn.url });
        const waiting = [...this.waiting.keys()];
        this.waiting.clear();
        for (const send of waiting) send();
        return;
      }
      case "message":
        this.channelMap.get(f.channel)?.deliver(f);
        return;
      case "ping":
        this.send({ op: "pong" });
        return;
      case "token":
        this.reconnectToken = f.reconnect_token;
        return;
      case "subscribed": {
        if (f.reconnect_token !== undefined) this.reconnectToken = f.reconnect_token;
        const req = f.id === undefined ? undefined : conn.subscribing.get(f.id);
        if (req) {
          conn.subscribing.delete(f.id as number);
          req.channel.subscribed(f.epoch, f.offset, f.recovered, req.since);
        }
        return;
      }
      case "unsubscribed":
        if (f.reconnect_token !== undefined) this.reconnectToken = f.reconnect_token;
        return;
      case "emitted":
        this.settle(f.id, (p) => p.resolve(f.offset));
        return;
      case "presence":
        this.settle(f.id, (p) => p.resolve(f.clients));
        return;
      case "presence_stats":
        this.settle(f.id, (p) => p.resolve({ clients: f.clients, users: f.users }));
        return;
      case "join":
      case "leave":
        this.channelMap.get(f.channel)?.presenceNotice(f.op, f.client);
        return;
      case "refreshed":
        this.expiresAt = f.expires_at;
        this.scheduleRefresh();
        return;
      case "pong":
        return;
      case "error": {
        const req = f.id === undefined ? undefined : conn.subscribing.get(f.id);
        if (req) {
          conn.subscribing.delete(f.id as number);
          req.channel.refused({ code: f.code, message: f.message });
        } else if (f.id !== undefined && this.pending.has(f.id)) {
          this.settle(f.id, (p) => p.reject(new HeraldError(f.code, f.message, f.channel)));
        } else if (f.id === conn.connectId && f.code === "unauthorized" && /expired/.test(f.message)) {
          this.tokenStale = true;
        } else {
          this.report(new HeraldError(f.code, f.message, f.channel));
        }
        return;
      }
      case "disconnect":
        conn.goodbye = { code: f.code, reason: f.reason };
        return;
    }
  }

  /** After `connected`: take back what the resume restored, subscribe the rest. */
  private restore(conn: Connection, restored: Record<string, ResumedChannel> | undefined): void {
    const positions = new Set(Object.keys(this.lastPositions ?? {}));
    for (const [name, entry] of Object.entries(restored ?? {})) {
      const ch = this.channelMap.get(name);
      if (!ch?.isWanted) {
        // Unsubscribed while offline: the token still had it.
        this.send({ op: "unsubscribe", id: this.nextId++, channel: name });
      } else if ("error" in entry) {
        ch.refused(entry.error);
      } else {
        ch.subscribed(entry.epoch, entry.offset, entry.recovered, positions.has(name));
      }
    }
    for (const ch of this.channelMap.values()) {
      if (ch.isWanted && !(restored && ch.name in restored)) this.subscribeOn(conn, ch);
    }
  }

  private positions(): Record<string, Since> {
    const out: Record<string, Since> = {};
    for (const ch of this.channelMap.values()) {
      const p = ch.position;
      if (ch.isWanted && p) out[ch.name] = p;
    }
    this.lastPositions = out;
    return out;
  }

  private subscribe(ch: Channel): void {
    if (this.conn?.connected && ch.isWanted) this.subscribeOn(this.conn, ch);
  }

  private subscribeOn(conn: Connection, ch: Channel): void {
    const id = this.nextId++;
    const since = ch.position;
    conn.subscribing.set(id, { channel: ch, since: since !== undefined });
    const send = (token?: string) => {
      if (this.conn !== conn) return;
      const frame: Command = { op: "subscribe", id, channel: ch.name };
      if (since) frame.since = since;
      if (token !== undefined) frame.token = token;
      this.send(frame);
    };
    const { token, getToken } = ch.options;
    if (getToken) {
      Promise.resolve()
        .then(() => getToken(ch.name))
        .then(send, (err: unknown) => {
          conn.subscribing.delete(id);
          ch.refused({ code: "unauthorized", message: `getToken for ${ch.name} failed: ${String(err)}` });
        });
    } else {
      send(token);
    }
  }

  private unsubscribe(ch: Channel): void {
    if (this.channelMap.get(ch.name) === ch) this.channelMap.delete(ch.name);
    if (this.conn?.connected) this.send({ op: "unsubscribe", id: this.nextId++, channel: ch.name });
  }

  /** The socket closed (or was given up): decide whether and when to come back. */
  private closed(code: number, reason: string): void {
    this.dropConnection();
    if (!this.running) return;
    if (code >= 4500 && code <= 4999 && code !== ABANDONED) {
      this.stop({ code, reason, reconnect: false }, "closed");
      return;
    }
    this.rotate();
    let delay: number;
    if (code === 4000) {
      delay = this.random() * (this.opts.drainWindowMs ?? 1000);
    } else {
      if (code === 4003) {
        if (!this.opts.getToken) {
          this.stop({ code, reason: `${reason}: pass getToken to reconnect with a fresh token`, reconnect: false }, "closed");
          return;
        }
        this.tokenStale = true;
      }
      delay = this.backoff.next();
    }
    this.fire("disconnected", { code, reason, reconnect: true });
    this.scheduleRetry(delay);
  }

  /** Gives up on the current socket (no heartbeat, connect timeout, a gap) and reconnects. */
  private abandon(reason: string): void {
    const conn = this.conn;
    if (!conn) return;
    detach(conn.ws);
    try {
      conn.ws.close(1000, "abandoned");
    } catch {
      // already closing
    }
    this.closed(ABANDONED, reason);
  }

  private stop(info: DisconnectedInfo, code: "closed"): void {
    const wasRunning = this.running;
    this.running = false;
    globalThis.removeEventListener?.("online", this.onOnline);
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const conn = this.conn;
    this.failPending(code, info.reason);
    this.dropConnection();
    if (conn) {
      detach(conn.ws);
      try {
        conn.ws.close(1000, "client disconnected");
      } catch {
        // already closed
      }
    }
    for (const fail of this.waiting.values()) fail(new HeraldError(code, info.reason));
    this.waiting.clear();
    this.failPending(code, info.reason);
    this.setState("disconnected");
    if (wasRunning) this.fire("disconnected", info);
  }

  /** Forgets the current connection: timers, pending answers, channel states. */
  private dropConnection(): void {
    this.conn = undefined;
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
    if (this.livenessTimer !== undefined) clearTimeout(this.livenessTimer);
    this.livenessTimer = undefined;
    this.failPending("disconnected", "the connection closed before the server answered");
    for (const ch of this.channelMap.values()) ch.connectionLost();
    if (this.running) this.setState("connecting");
  }

  private failPending(code: "disconnected" | "closed", message: string): void {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new HeraldError(code, message, p.channel));
      this.pending.delete(id);
    }
  }

  private scheduleRetry(delay: number): void {
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.open(), delay);
  }

  /** The browser is back online: skip the rest of the wait. */
  private reconnectNow(): void {
    if (this.running && !this.conn && this.retryTimer !== undefined) this.scheduleRetry(0);
  }

  private rotate(): void {
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
  }

  /** Any frame proves the connection alive; silence past ping interval + grace ends it. */
  private armLiveness(): void {
    if (this.livenessTimer !== undefined) clearTimeout(this.livenessTimer);
    const limit = this.pingIntervalMs + (this.opts.pingGraceMs ?? 10_000);
    this.livenessTimer = setTimeout(() => this.abandon(`no frame from the server within ${limit} ms`), limit);
  }

  private tokenExpiring(): boolean {
    return this.expiresAt !== undefined && Date.now() >= this.expiresAt * 1000 - 5_000;
  }

  /** With `getToken`: `refresh` the connection before its token expires. */
  private scheduleRefresh(): void {
    const getToken = this.opts.getToken;
    if (!getToken || this.expiresAt === undefined) return;
    const conn = this.conn;
    const left = this.expiresAt * 1000 - Date.now();
    const margin = Math.min(this.opts.refreshMarginMs ?? 60_000, left / 2);
    this.later(async () => {
      try {
        const token = await getToken();
        this.token = token;
        if (this.conn === conn && conn?.connected) this.send({ op: "refresh", id: this.nextId++, token });
      } catch (err) {
        this.report(new Error(`getToken failed while refreshing: ${String(err)}`));
      }
    }, Math.max(0, left - margin));
  }

  // ---- small helpers ----

  private send(frame: Command): void {
    const ws = this.conn?.ws;
    if (ws && ws.readyState === OPEN) ws.send(JSON.stringify(frame));
  }

  private settle(id: number | undefined, f: (p: Pending) => void): void {
    if (id === undefined) return;
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    f(p);
  }

  /** A timer that dies with the connection. */
  private later(f: () => void, ms: number): void {
    this.timers.push(setTimeout(f, ms));
  }

  private setState(state: ConnectionState): void {
    if (state === this.stateValue) return;
    this.stateValue = state;
    this.fire("state", state);
  }

  private report(err: unknown): void {
    const e = err instanceof Error ? err : new Error(String(err));
    if (this.listening("error")) this.fire("error", e);
    else console.warn("herald:", e.message);
  }

  protected override listenerFailed(err: unknown): void {
    console.error("herald: a listener threw", err);
  }
}

function detach(ws: Socket): void {
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
}

/** `http(s)://host` becomes `ws(s)://host/ws`; a `ws(s)://` URL is kept as given. */
export function wsUrl(url: string): string {
  const u = new URL(url);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.pathname === "/" || u.pathname === "") u.pathname = "/ws";
  return u.toString();
}
