// A classic Socket.IO chat, moved to Herald: Herald relays the messages, so
// this server only hands out the page and the socket.io-client browser build
// (at /socket.io/socket.io.js, where a Socket.IO server would serve it).
// Start a node (open mode), then, from the repository root:
//
//   npm ci --prefix examples/socketio-chat && node examples/socketio-chat/server.mjs [--herald http://127.0.0.1:8080] [--port 3000]
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const { values: opt } = parseArgs({
  options: {
    herald: { type: "string", default: "http://127.0.0.1:8080" }, // the node, as browsers reach it
    port: { type: "string", default: "3000" },
  },
});
const here = (path) => new URL(path, import.meta.url);
const page = readFileSync(here("index.html"), "utf8").replaceAll("{{herald}}", opt.herald);
const client = readFileSync(here("node_modules/socket.io-client/dist/socket.io.min.js"));

const server = createServer((req, res) => {
  if (req.method !== "GET") return res.writeHead(405).end();
  if (req.url === "/") return res.writeHead(200, { "content-type": "text/html" }).end(page);
  if (req.url === "/socket.io/socket.io.js") {
    return res.writeHead(200, { "content-type": "text/javascript" }).end(client);
  }
  res.writeHead(404).end();
});
server.listen(Number(opt.port), "127.0.0.1", () => {
  console.log(`socketio-chat example: http://127.0.0.1:${server.address().port}/ (Herald at ${opt.herald})`);
});
