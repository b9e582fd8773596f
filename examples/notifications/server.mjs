// Per-user notifications: each user reads their own channel,
// `notifications#alice`, which only a connection whose token says
// `sub: "alice"` may subscribe to (a user channel, docs/security.md). The
// node and this backend share a JWT secret:
//
//   cargo run --release -p herald -- serve --jwt-secret dev-only-secret-at-least-32-bytes-long
//   JWT_SECRET=dev-only-secret-at-least-32-bytes-long node examples/notifications/server.mjs
//     [--herald http://127.0.0.1:8080] [--port 3000] [--api-key KEY]
//
//   GET  /token?user=alice        a connection JWT for alice
//   POST /notify {user, text}     publishes `notification` on notifications#USER
//
// TOY LOGIN: /token gives anyone a token for any user they name. A real
// backend takes the user from its own session (a cookie) and never from the
// request, or everyone can read everyone's notifications.
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const { values: opt } = parseArgs({
  options: {
    herald: { type: "string", default: "http://127.0.0.1:8080" }, // the node, as browsers reach it
    "herald-api": { type: "string" }, // its publish API, when elsewhere (herald serve --admin-listen)
    "api-key": { type: "string", default: process.env.API_KEY }, // when the node wants one (--api-key)
    "jwt-secret": { type: "string", default: process.env.JWT_SECRET }, // the node's --jwt-secret
    port: { type: "string", default: "3000" },
  },
});
if (!opt["jwt-secret"]) {
  console.error("Set JWT_SECRET (or --jwt-secret) to the secret the node was started with.");
  process.exit(1);
}
const page = readFileSync(new URL("index.html", import.meta.url), "utf8").replaceAll("{{herald}}", opt.herald);

/** An HS256 JWT for `user`, valid for 10 minutes; the client fetches a new one before then. */
function token(user) {
  const part = (json) => Buffer.from(JSON.stringify(json)).toString("base64url");
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: user, exp: Math.floor(Date.now() / 1000) + 600 })}`;
  return `${unsigned}.${createHmac("sha256", opt["jwt-secret"]).update(unsigned).digest("base64url")}`;
}

/** POST /api/v1/publish (docs/api.md): the API may publish to any user's channel. */
async function publish(channel, event, data) {
  const auth = opt["api-key"] ? { authorization: `Bearer ${opt["api-key"]}` } : {};
  const res = await fetch(`${opt["herald-api"] ?? opt.herald}/api/v1/publish`, {
    method: "POST",
    headers: { "content-type": "application/json", ...auth },
    body: JSON.stringify({ channel, event, data }),
  });
  if (!res.ok) throw new Error(`Herald answered ${res.status} ${await res.text()}`);
}

// A user id names a channel's owner after its `#`: no `#`, `,` or spaces in it.
const validUser = (user) => typeof user === "string" && /^[\w.@-]{1,64}$/.test(user);

const server = createServer(async (req, res) => {
  const url = new URL(req.url, "http://localhost");
  const route = `${req.method} ${url.pathname}`;
  if (route === "GET /") return res.writeHead(200, { "content-type": "text/html" }).end(page);
  if (route === "GET /token") {
    const user = url.searchParams.get("user");
    if (!validUser(user)) return res.writeHead(400).end("user: letters, digits, . _ @ -");
    return res.writeHead(200, { "content-type": "text/plain" }).end(token(user));
  }
  if (route !== "POST /notify") return res.writeHead(404).end();

  const { user, text } = await readJson(req);
  if (!validUser(user) || typeof text !== "string" || !text.trim()) return res.writeHead(400).end("needs {user, text}");
  try {
    await publish(`notifications#${user}`, "notification", { text: text.slice(0, 500), at: new Date().toISOString() });
    res.writeHead(204).end();
  } catch (err) {
    res.writeHead(502).end(err.message);
  }
});

async function readJson(req) {
  let body = "";
  for await (const chunk of req) body += chunk;
  try {
    return JSON.parse(body);
  } catch {
    return {};
  }
}

server.listen(Number(opt.port), "127.0.0.1", () => {
  console.log(`notifications example: http://127.0.0.1:${server.address().port}/ (Herald at ${opt.herald})`);
});
