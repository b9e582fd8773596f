// Chat: the browsers talk to each other through Herald; this server only
// hands out the page. Start a node (open mode), then:
//
//   node examples/chat/server.mjs [--herald http://127.0.0.1:8080] [--port 3000]
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const { values: opt } = parseArgs({
  options: {
    herald: { type: "string", default: "http://127.0.0.1:8080" }, // the node, as browsers reach it
    port: { type: "string", default: "3000" },
  },
});
const page = readFileSync(new URL("index.html", import.meta.url), "utf8").replaceAll("{{herald}}", opt.herald);

const server = createServer((req, res) => {
  if (req.method === "GET" && req.url === "/") res.writeHead(200, { "content-type": "text/html" }).end(page);
  else res.writeHead(404).end();
});
server.listen(Number(opt.port), "127.0.0.1", () => {
  console.log(`chat example: http://127.0.0.1:${server.address().port}/ (Herald at ${opt.herald})`);
});
