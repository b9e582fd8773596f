// Live reviews: this backend keeps the reviews (in memory) and tells Herald
// about each new one; every open page shows it at once. Start a node, then:
//
//   node examples/reviews/server.mjs [--herald http://127.0.0.1:8080] [--port 3000] [--api-key KEY]
//
//   GET  /reviews                          the list, for a page's first load (and reloads)
//   POST /reviews {author, stars, text}    stores one, publishes `review_added` on `reviews`
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

const reviews = [{ id: 1, author: "Herald", stars: 5, text: "Post a review: every open page shows it at once." }];

const server = createServer(async (req, res) => {
  const reply = (status, body) => res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
  const route = `${req.method} ${req.url}`;
  if (route === "GET /") return res.writeHead(200, { "content-type": "text/html" }).end(page);
  if (route === "GET /reviews") return reply(200, reviews);
  if (route !== "POST /reviews") return reply(404, { error: "no such route" });

  const { author, stars, text } = await readJson(req);
  if (typeof text !== "string" || !text.trim()) return reply(400, { error: "text is required" });
  const review = {
    id: reviews.length + 1,
    author: String(author || "anonymous").slice(0, 60),
    stars: Math.min(5, Math.max(1, Math.round(Number(stars)) || 5)),
    text: text.slice(0, 2000),
  };
  reviews.push(review); // stored first: a page that misses the live update finds it on reload
  try {
    await publish("reviews", "review_added", review);
  } catch (err) {
    console.error(`review ${review.id} stored but not published: ${err.message}`);
  }
  reply(201, review);
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
  console.log(`reviews example: http://127.0.0.1:${server.address().port}/ (Herald at ${opt.herald})`);
});
