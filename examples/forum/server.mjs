// Forum threads: one Herald channel per thread (`thread:7`). A thread page
// subscribes to its own; a new post is published there and nowhere else.
// Start a node, then:
//
//   node examples/forum/server.mjs [--herald http://127.0.0.1:8080] [--port 3000] [--api-key KEY]
//
//   GET  /threads/ID                 the thread page
//   GET  /threads/ID/posts           its posts, for the page's first load (and reloads)
//   POST /threads/ID/posts {author, text}   stores one, publishes `post_created` on `thread:ID`
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const { values: opt } = parseArgs({
  options: {
    herald: { type: "string", default: "http://127.0.0.1:8080" }, // the node, as browsers reach it
    "herald-api": { type: "string" }, // its publish API, when elsewhere (herald serve --admin-listen)
    "api-key": { type: "string", default: process.env.API_KEY }, // when the node wants one (--api-key)
    port: { type: "string", default: "3000" },
  },
});
const page = readFileSync(new URL("index.html", import.meta.url), "utf8").replaceAll("{{herald}}", opt.herald);

/** POST /api/v1/publish (docs/api.md): all it takes to reach every subscriber. */
async function publish(channel, event, data) {
  const auth = opt["api-key"] ? { authorization: `Bearer ${opt["api-key"]}` } : {};
  const res = await fetch(`${opt["herald-api"] ?? opt.herald}/api/v1/publish`, {
    method: "POST",
    headers: { "content-type": "application/json", ...auth },
    body: JSON.stringify({ channel, event, data }),
  });
  if (!res.ok) throw new Error(`Herald answered ${res.status} ${await res.text()}`);
}

const threads = new Map(); // thread id → its posts

const server = createServer(async (req, res) => {
  const reply = (status, body) => res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
  if (req.url === "/") return res.writeHead(302, { location: "/threads/1" }).end();
  const [, id, posts] = req.url.match(/^\/threads\/([\w-]{1,40})(\/posts)?$/) ?? [];
  if (!id) return reply(404, { error: "no such route" });
  if (req.method === "GET") return posts ? reply(200, threads.get(id) ?? []) : res.writeHead(200, { "content-type": "text/html" }).end(page);
  if (req.method !== "POST" || !posts) return reply(405, { error: "method not allowed" });

  const { author, text } = await readJson(req);
  if (typeof text !== "string" || !text.trim()) return reply(400, { error: "text is required" });
  if (!threads.has(id)) threads.set(id, []);
  const thread = threads.get(id);
  const post = { id: thread.length + 1, author: String(author || "anonymous").slice(0, 60), text: text.slice(0, 5000) };
  thread.push(post);
  try {
    await publish(`thread:${id}`, "post_created", post);
  } catch (err) {
    console.error(`post ${id}/${post.id} stored but not published: ${err.message}`);
  }
  reply(201, post);
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
  console.log(`forum example: http://127.0.0.1:${server.address().port}/threads/1 (Herald at ${opt.herald})`);
});
