// Real processes for the integration tests: `redis-server` and `herald serve`,
// each on its own loopback port and stopped by PID. Shared by test/node/,
// test/browser/ and the examples' tests.
import { type ChildProcess, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createConnection } from "node:net";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** The repository root. */
export const repo = fileURLToPath(new URL("../../../", import.meta.url));

/** The gateway binary: `GATEWAY_BIN`, or the debug build of this checkout. */
export function heraldBin(): string {
  const bin = process.env.GATEWAY_BIN ?? `${repo}target/debug/herald`;
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`cargo build --bin herald\` first`);
  return bin;
}

const running = new Set<ChildProcess>();

/** Stops every process started by this file (SIGKILL): call it in `afterEach`. */
export function stopAll(): void {
  for (const p of running) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  running.clear();
}

export interface Redis {
  url: string;
  port: number;
  pid: number;
}

/** A `redis-server` on a random port below the ephemeral range (never 6379). */
export async function startRedis(): Promise<Redis> {
  for (let attempt = 0; ; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const p = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    running.add(p);
    let out = "";
    p.stdout?.on("data", (d: Buffer) => (out += d.toString()));
    const ready = await until(() => out.includes("Ready to accept connections") || p.exitCode !== null, 10_000);
    if (ready && p.exitCode === null) return { url: `redis://127.0.0.1:${port}`, port, pid: p.pid as number };
    p.kill("SIGKILL");
    if (attempt >= 5) throw new Error(`redis-server did not start:\n${out}`);
  }
}

export interface Node {
  /** `ws://127.0.0.1:PORT/ws` */
  ws: string;
  /** `http://127.0.0.1:PORT`: the public listener, which also serves the API here. */
  http: string;
  id: string;
  pid: number;
  logs(): string;
  kill(signal: NodeJS.Signals): void;
  /** Resolves with the exit code (or signal) once the process is gone. */
  exited: Promise<number | string>;
}

/**
 * `herald serve` on port 0 (unless `args` has a `--listen`, e.g. to restart a
 * node on its address), with only the environment given here; resolves
 * once its `/readyz` says ready.
 */
export async function startNode(args: string[] = [], env: Record<string, string> = {}): Promise<Node> {
  const listen = args.includes("--listen") ? [] : ["--listen", "127.0.0.1:0"];
  const p = spawn(heraldBin(), ["serve", ...listen, "--max-connections-per-ip", "0", ...args], {
    env: { HERALD_LOG: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(p);
  let stdout = "";
  let stderr = "";
  p.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
  p.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | string>((resolve) => p.on("exit", (code, sig) => resolve(code ?? sig ?? -1)));
  await until(() => stdout.includes("\n") || p.exitCode !== null, 15_000);
  const line = stdout.split("\n")[0] ?? "";
  const field = (k: string) => line.split(/\s+/).find((w) => w.startsWith(k))?.slice(k.length);
  const pub = field("public=");
  if (!pub) throw new Error(`herald did not report its ports:\n${stdout}\n${stderr}`);
  // Ready, so that tests do not race a node still reaching Redis.
  const ready = async () => {
    try {
      return (await fetch(`http://${pub}/readyz`)).status === 200;
    } catch {
      return false;
    }
  };
  if (!(await until(ready, 15_000))) throw new Error(`herald at ${pub} did not become ready:\n${stderr}`);
  return {
    ws: `ws://${pub}/ws`,
    http: `http://${pub}`,
    id: field("node=") ?? "",
    pid: p.pid as number,
    logs: () => stderr,
    kill: (signal) => p.kill(signal),
    exited,
  };
}

export interface Example {
  /** The URL the example printed on its first line, e.g. `http://127.0.0.1:PORT/`. */
  url: string;
  pid: number;
  logs(): string;
}

/**
 * `node examples/NAME/server.mjs --port 0 ...args`, as its README says to run
 * it (on a free port), with only the environment given here.
 */
export async function startExample(name: string, args: string[] = [], env: Record<string, string> = {}): Promise<Example> {
  const p = spawn(process.execPath, [`${repo}examples/${name}/server.mjs`, "--port", "0", ...args], {
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(p);
  let out = "";
  p.stdout?.on("data", (d: Buffer) => (out += d.toString()));
  p.stderr?.on("data", (d: Buffer) => (out += d.toString()));
  await until(() => out.includes("\n") || p.exitCode !== null, 15_000);
  const url = /http:\/\/\S+/.exec(out.split("\n")[0] ?? "")?.[0];
  if (!url) throw new Error(`examples/${name}/server.mjs did not print its URL:\n${out}`);
  return { url, pid: p.pid as number, logs: () => out };
}

/** Publishes through the HTTP API; resolves with the offset. */
export async function publish(node: Node, channel: string, event: string, data: unknown, key?: string): Promise<number> {
  const res = await fetch(`${node.http}/api/v1/publish`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(key ? { authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify({ channel, event, data }),
  });
  const body = (await res.json()) as { offset?: number };
  if (!res.ok || body.offset === undefined) throw new Error(`publish: ${res.status} ${JSON.stringify(body)}`);
  return body.offset;
}

export interface Ticker {
  /** How many publications the API has acknowledged so far. */
  sent(): number;
  /** Stops publishing; resolves with the final count (rejects if a publish failed). */
  stop(): Promise<number>;
}

/**
 * Publishes `tick` events `{ seq: 1 }`, `{ seq: 2 }`, … on `channel` through
 * `node`'s HTTP API, `rate` a second, one at a time, until `stop()`.
 */
export function publishAtRate(node: Node, channel: string, rate: number): Ticker {
  let sent = 0;
  let stopped = false;
  const start = Date.now();
  const loop = (async () => {
    while (!stopped) {
      const wait = start + ((sent + 1) * 1000) / rate - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      await publish(node, channel, "tick", { seq: sent + 1 });
      sent++;
    }
  })();
  // A failure is reported by stop(), not as an unhandled rejection meanwhile.
  loop.catch(() => (stopped = true));
  return {
    sent: () => sent,
    stop: async () => {
      stopped = true;
      await loop;
      return sent;
    },
  };
}

/** A gauge or counter without labels from the node's `/metrics`. */
export async function metric(node: Node, name: string): Promise<number> {
  const text = await (await fetch(`${node.http}/metrics`)).text();
  // `name` alone sums every series of the family; `name{...}` is one series.
  let sum = NaN;
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const cut = line.lastIndexOf(" ");
    const series = line.slice(0, cut);
    if (series === name || (!name.includes("{") && series.startsWith(`${name}{`))) {
      sum = (Number.isNaN(sum) ? 0 : sum) + Number(line.slice(cut + 1));
    }
  }
  return sum;
}

/** An HS256 JWT, as a backend would mint it. */
export function jwt(secret: string, claims: Record<string, unknown>): string {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

/** Polls `cond` every 10 ms until it holds; false after `ms`. */
export async function until(cond: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
}

/** Like `until`, but throws with `what` on timeout. */
export async function eventually(what: string, cond: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  if (!(await until(cond, ms))) throw new Error(`timed out waiting for: ${what}`);
}

/** Whether something listens on the TCP port. */
export function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ port, host: "127.0.0.1" }, () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}

/** A file of this repository, as text. */
export function repoFile(path: string): string {
  return readFileSync(`${repo}${path}`, "utf8");
}
