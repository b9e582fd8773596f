// HAProxy in front of real `herald` nodes, on a free loopback port and stopped
// by PID: one URL for clients, such as socket.io-client, that reconnect to the
// URL they were given. The first node that is up takes every connection; once
// it fails its `/readyz` check (killed, or draining), the next one does.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { listening, until, type Node } from "./harness.js";

export interface HaProxy {
  /** `http://127.0.0.1:PORT` */
  http: string;
  port: number;
  pid: number;
  logs(): string;
}

const running = new Map<ChildProcess, string>();

/** Stops every HAProxy started by this file (SIGKILL, by PID): call it in `afterEach`. */
export function stopHaProxies(): void {
  for (const [p, dir] of running) {
    if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
  running.clear();
}

export interface HaProxyOptions {
  /**
   * Spread new requests over the nodes (`balance roundrobin`), and route
   * every request naming a Socket.IO sid to the node whose id starts it, as
   * deploy/local/cluster.sh does for long-polling; a refused connection is
   * retried on another node at once.
   */
  routeSids?: boolean;
}

/**
 * HAProxy on `nodes`, in that order of preference (`balance first`, unless
 * `opts.routeSids`), each checked on its `/readyz` every 100 ms and taken
 * out at the first failure.
 * Without `check`, a dead node stays in and clients keep getting `503`.
 */
export async function startHaProxy(nodes: Node[], opts: HaProxyOptions = {}): Promise<HaProxy> {
  const dir = mkdtempSync(`${tmpdir()}/herald-haproxy-`);
  const rules = opts.routeSids
    ? nodes.map((n, i) => `    use-server node${i} if { urlp(sid) -m beg ${n.id}. }\n`).join("")
    : "";
  const servers = nodes.map((n, i) => `    server node${i} ${new URL(n.http).host} check`).join("\n");
  // HAProxy cannot report a port the kernel chose: take one the kernel just
  // gave out, and try again should something else take it meanwhile.
  for (let attempt = 0; attempt < 10; attempt++) {
    const port = await freePort();
    if (await listening(port)) continue;
    const cfg = `global
    maxconn 1000

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    timeout check 1s
    retries 2
    option redispatch${opts.routeSids ? " 1" : ""}

frontend clients
    bind 127.0.0.1:${port}
    default_backend herald

backend herald
    balance ${opts.routeSids ? "roundrobin" : "first"}
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 100ms fall 1 rise 1
${rules}${servers}
`;
    writeFileSync(`${dir}/haproxy.cfg`, cfg);
    const p = spawn("haproxy", ["-db", "-f", `${dir}/haproxy.cfg`], { stdio: ["ignore", "pipe", "pipe"] });
    running.set(p, dir);
    let out = "";
    p.stdout?.on("data", (d: Buffer) => (out += d.toString()));
    p.stderr?.on("data", (d: Buffer) => (out += d.toString()));
    p.on("error", (e) => (out += `${e.message}\n`));
    const up = await until(async () => p.exitCode !== null || p.signalCode !== null || (await listening(port)), 10_000);
    if (up && p.exitCode === null && p.signalCode === null) {
      return { http: `http://127.0.0.1:${port}`, port, pid: p.pid as number, logs: () => out };
    }
    p.kill("SIGKILL");
    running.delete(p);
    // A port in use: try another; anything else will not get better.
    if (!/bind|address already in use/i.test(out)) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`haproxy did not start (apt-get install haproxy):\n${out}`);
    }
  }
  rmSync(dir, { recursive: true, force: true });
  throw new Error("haproxy did not find a free port");
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
}
