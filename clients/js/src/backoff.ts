/** Reconnect delays: exponential growth, full jitter, reset after a stable connection. */
export interface BackoffOptions {
  /** Upper bound of the first delay, in ms. Default 500. */
  initialMs?: number;
  /** No delay is ever longer than this, in ms. Default 20,000. */
  maxMs?: number;
  /** Growth of the upper bound per failed attempt. Default 2. */
  factor?: number;
  /** A connection that lasts this long (ms) resets the growth. Default 10,000. */
  resetAfterMs?: number;
}

export const BACKOFF_DEFAULTS: Required<BackoffOptions> = {
  initialMs: 500,
  maxMs: 20_000,
  factor: 2,
  resetAfterMs: 10_000,
};

/**
 * Full jitter: each delay is uniform in [0, min(max, initial * factor^attempt)],
 * so clients dropped together (a node crash, a drain) spread their retries.
 */
export class Backoff {
  private attempt = 0;
  private readonly opts: Required<BackoffOptions>;

  constructor(
    opts: BackoffOptions = {},
    private readonly random: () => number = Math.random,
  ) {
    this.opts = { ...BACKOFF_DEFAULTS, ...opts };
  }

  /** The next delay in ms; each call grows the bound for the next one. */
  next(): number {
    const { initialMs, maxMs, factor } = this.opts;
    const ceiling = Math.min(maxMs, initialMs * factor ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 64);
    return Math.floor(this.random() * ceiling);
  }

  /** How many delays were handed out since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  reset(): void {
    this.attempt = 0;
  }

  get resetAfterMs(): number {
    return this.opts.resetAfterMs;
  }
}
