// What the Socket.IO tests share about socket.io-client sockets.
import type { Socket } from "socket.io-client";

/** Resolves once `s` is connected to its namespace; rejects on `connect_error`. */
export function connected(s: Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    if (s.connected) return resolve();
    s.once("connect", () => resolve());
    s.once("connect_error", (e) => reject(e));
  });
}
