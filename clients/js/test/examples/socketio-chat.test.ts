// examples/socketio-chat: a classic Socket.IO chat page, unchanged but for its
// io(...) URL, with socket.io-client's default options (polling, then upgrade).
import { it } from "vitest";
import { startExample, startNode } from "../harness.js";
import { examplePages, shows } from "./pages.js";

const open = examplePages();

it("the classic Socket.IO chat page chats through Herald", async () => {
  const node = await startNode();
  const app = await startExample("socketio-chat", ["--herald", node.http]);
  const alice = await open(app.url);
  const bob = await open(app.url);
  for (const page of [alice, bob]) await page.waitForFunction("socket.connected");
  await alice.fill("#input", "hello from a Socket.IO page");
  await alice.press("#input", "Enter");
  await shows(bob, "#messages li", "hello from a Socket.IO page");
  await shows(alice, "#messages li", "hello from a Socket.IO page");
});
