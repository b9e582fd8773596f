import { HeraldError } from "./errors.js";
import type { ErrorBody, Message, PresenceClient, Since } from "./protocol.gen.js";

/** Where a publication came from: enough to store a position or log it. */
export interface MessageMeta {
  channel: string;
  event: string;
  epoch: string;
  offset: number;
}

/** A channel's subscription state. */
export type ChannelState = "subscribing" | "subscribed" | "unsubscribed";

/** Told to `onUnrecovered` listeners: publications between `lost` and `now` cannot be replayed. */
export interface Unrecovered {
  /** The last position this client handled, if it had one. */
  lost: Since | undefined;
  /** Where the channel continues: live publications follow this position. */
  now: Since;
}

/** Options of `herald.channel(name, options)`. */
export interface ChannelOptions {
  /**
   * Start after this position (a stored `{epoch, offset}` from `meta`):
   * the publications since then are replayed when history still holds them,
   * otherwise `onUnrecovered` fires.
   */
  since?: Since;
  /** A subscribe token, for channels whose rules ask for one. */
  token?: string;
  /** Fetches a subscribe token; called before every subscribe of this channel. */
  getToken?: (channel: string) => string | Promise<string>;
}

export type PublicationHandler<T = unknown> = (data: T, meta: MessageMeta) => void;

/** What a channel needs from its client. */
export interface ChannelHost {
  requestSubscribe(channel: Channel): void;
  requestUnsubscribe(channel: Channel): void;
  emitOn(channel: string, event: string, data: unknown): Promise<number>;
  presenceOf(channel: string): Promise<PresenceClient[]>;
  resync(reason: string): void;
  report(err: unknown): void;
  retryLater(channel: Channel): void;
}

/**
 * One channel of a `Herald` client. It keeps its position (epoch and offset
 * of the last publication handed to the app) so that every reconnect resumes
 * exactly there: the app sees each publication once, in offset order.
 */
export class Channel {
  readonly name: string;
  private stateValue: ChannelState = "subscribing";
  private pos: Since | undefined;
  /** Whether the app still wants the channel (false after `unsubscribe`). */
  private wanted = true;
  private readonly handlers = new Map<string, Set<PublicationHandler<never>>>();
  private readonly stateListeners = new Set<(state: ChannelState) => void>();
  private readonly unrecoveredListeners = new Set<(info: Unrecovered) => void>();
  private readonly errorListeners = new Set<(err: HeraldError) => void>();
  private readonly joinListeners = new Set<(client: PresenceClient) => void>();
  private readonly leaveListeners = new Set<(client: PresenceClient) => void>();

  /** @internal Created by `Herald.channel`. */
  constructor(
    name: string,
    private readonly host: ChannelHost,
    readonly options: ChannelOptions = {},
  ) {
    this.name = name;
    this.pos = options.since && { ...options.since };
  }

  /** `subscribing` until the server confirms, `subscribed`, or `unsubscribed`. */
  get state(): ChannelState {
    return this.stateValue;
  }

  /** The epoch and offset of the last publication handed to the app. */
  get position(): Since | undefined {
    return this.pos && { ...this.pos };
  }

  /**
   * Calls `handler(data, meta)` for every publication with this event name;
   * `"*"` receives every event. Returns the function that removes it.
   */
  on<T = unknown>(event: string, handler: PublicationHandler<T>): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(handler as PublicationHandler<never>);
    return () => {
      set.delete(handler as PublicationHandler<never>);
    };
  }

  /** Calls `listener` on every state change. */
  onState(listener: (state: ChannelState) => void): () => void {
    return add(this.stateListeners, listener);
  }

  /**
   * Calls `listener` when publications were missed and cannot be replayed
   * (history expired, the channel's epoch changed): reload the channel's
   * state from your backend.
   */
  onUnrecovered(listener: (info: Unrecovered) => void): () => void {
    return add(this.unrecoveredListeners, listener);
  }

  /** Calls `listener` when the server refuses the subscription (e.g. `forbidden`). */
  onError(listener: (err: HeraldError) => void): () => void {
    return add(this.errorListeners, listener);
  }

  /** Everyone subscribed to this channel right now, on every node (namespaces with `presence`). */
  presence(): Promise<PresenceClient[]> {
    return this.host.presenceOf(this.name);
  }

  /**
   * Calls `listener` when a connection subscribes to this channel
   * (namespaces with `join_leave`). At most once, not replayed after a
   * reconnect: call `presence()` again then.
   */
  onJoin(listener: (client: PresenceClient) => void): () => void {
    return add(this.joinListeners, listener);
  }

  /** Calls `listener` when a connection leaves this channel, or its node died. */
  onLeave(listener: (client: PresenceClient) => void): () => void {
    return add(this.leaveListeners, listener);
  }

  /** @internal A `join` or `leave` frame for this channel. */
  presenceNotice(kind: "join" | "leave", client: PresenceClient): void {
    if (!this.wanted) return;
    for (const l of kind === "join" ? this.joinListeners : this.leaveListeners) {
      try {
        l(client);
      } catch (err) {
        this.host.report(err);
      }
    }
  }

  /** Publishes on this channel; resolves with the publication's offset. */
  emit(event: string, data?: unknown): Promise<number> {
    return this.host.emitOn(this.name, event, data ?? null);
  }

  /** Stops receiving this channel; `herald.channel(name)` subscribes again. */
  unsubscribe(): void {
    if (!this.wanted) return;
    this.wanted = false;
    this.host.requestUnsubscribe(this);
    this.setState("unsubscribed");
  }

  /** Resolves once the channel is subscribed (at once if it is). */
  ready(): Promise<void> {
    if (this.stateValue === "subscribed") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const offState = this.onState((s) => {
        if (s === "subscribed") {
          done();
          resolve();
        } else if (s === "unsubscribed") {
          done();
          reject(new HeraldError("closed", `channel ${this.name} was unsubscribed`, this.name));
        }
      });
      const offError = this.onError((err) => {
        done();
        reject(err);
      });
      const done = () => {
        offState();
        offError();
      };
    });
  }

  /** @internal */
  get isWanted(): boolean {
    return this.wanted;
  }

  /** @internal The connection dropped: the channel waits for the next one. */
  connectionLost(): void {
    if (this.wanted) this.setState("subscribing");
  }

  /**
   * @internal A `subscribed` reply, or a restored channel of a resume.
   * `askedSince` tells whether the request carried a position.
   */
  subscribed(epoch: string, offset: number, recovered: boolean | undefined, askedSince: boolean): void {
    if (!this.wanted) return;
    const lost = this.pos;
    if (!askedSince || lost === undefined) {
      this.pos = { epoch, offset };
    } else if (recovered !== true) {
      this.pos = { epoch, offset };
      this.notify(this.unrecoveredListeners, { lost: { ...lost }, now: { epoch, offset } });
    }
    // recovered: the replayed publications follow and move the position.
    this.setState("subscribed");
  }

  /** @internal The server refused to (re)subscribe. */
  refused(error: ErrorBody): void {
    if (!this.wanted) return;
    const err = new HeraldError(error.code, error.message, this.name);
    // Error listeners first: `ready()` rejects with the server's code, not `closed`.
    this.notify(this.errorListeners, err);
    if (error.code === "unavailable" || error.code === "rate_limited") {
      this.setState("subscribing");
      this.host.retryLater(this);
    } else {
      this.wanted = false;
      this.setState("unsubscribed");
    }
  }

  /** @internal One `message` frame for this channel. */
  deliver(m: Message): void {
    if (!this.wanted) return;
    const pos = this.pos;
    if (pos && pos.epoch === m.epoch) {
      if (m.offset <= pos.offset) return; // already handed to the app
      if (m.offset !== pos.offset + 1) {
        this.host.resync(`gap on ${this.name}: offset ${m.offset} after ${pos.offset}`);
        return;
      }
    } else if (pos) {
      this.host.resync(`epoch of ${this.name} changed without notice`);
      return;
    }
    this.pos = { epoch: m.epoch, offset: m.offset };
    const meta: MessageMeta = { channel: this.name, event: m.event, epoch: m.epoch, offset: m.offset };
    for (const key of [m.event, "*"]) {
      for (const h of [...(this.handlers.get(key) ?? [])]) {
        try {
          (h as PublicationHandler)(m.data, meta);
        } catch (err) {
          this.host.report(err);
        }
      }
    }
  }

  private setState(state: ChannelState): void {
    if (state === this.stateValue) return;
    this.stateValue = state;
    this.notify(this.stateListeners, state);
  }

  private notify<T>(listeners: Set<(v: T) => void>, value: T): void {
    for (const l of [...listeners]) {
      try {
        l(value);
      } catch (err) {
        this.host.report(err);
      }
    }
  }
}

function add<T>(set: Set<T>, item: T): () => void {
  set.add(item);
  return () => {
    set.delete(item);
  };
}
