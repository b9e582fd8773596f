import type { ErrorCode } from "./protocol.gen.js";

/**
 * Why a request failed: a server error code, or one of the client's own:
 * `timeout` (no answer in `requestTimeoutMs`), `disconnected` (the connection
 * dropped before the answer; an emit may or may not have been published) and
 * `closed` (`disconnect()` was called, or the client stopped for good).
 */
export type HeraldErrorCode = ErrorCode | "timeout" | "disconnected" | "closed";

/** A refused or failed request. Build your logic on `code`; `message` is for people. */
export class HeraldError extends Error {
  readonly code: HeraldErrorCode;
  /** The channel the request was about, when there is one. */
  readonly channel: string | undefined;

  constructor(code: HeraldErrorCode, message: string, channel?: string) {
    super(message);
    this.name = "HeraldError";
    this.code = code;
    this.channel = channel;
  }
}
