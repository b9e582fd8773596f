// The Herald client: one `Herald` per app, one `Channel` per channel.
export { Herald, ABANDONED, wsUrl } from "./client.js";
export type {
  ConnectedInfo,
  ConnectionState,
  DisconnectedInfo,
  HeraldEvents,
  HeraldOptions,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { Channel } from "./channel.js";
export type { ChannelOptions, ChannelState, MessageMeta, PublicationHandler, Unrecovered } from "./channel.js";
export { Backoff, BACKOFF_DEFAULTS } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { HeraldError } from "./errors.js";
export type { HeraldErrorCode } from "./errors.js";
export { CLOSE_CODES, CLOSE_REASONS, ERROR_CODES } from "./protocol.gen.js";
export type * from "./protocol.gen.js";
