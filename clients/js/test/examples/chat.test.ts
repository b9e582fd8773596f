// examples/chat: browsers emit to each other, with no backend of their own.
import { it } from "vitest";
import { startExample, startNode } from "../harness.js";
import { examplePages, live, shows } from "./pages.js";

const open = examplePages();

it("a message sent from one page appears in the other", async () => {
  const node = await startNode();
  const app = await startExample("chat", ["--herald", node.http]);
  const alice = await open(app.url);
  const bob = await open(app.url);
  await Promise.all([live(alice), live(bob)]);
  await alice.fill("[name=author]", "alice");
  await alice.fill("[name=text]", "hello from alice");
  await alice.press("[name=text]", "Enter");
  await shows(bob, "#messages li", "alice: hello from alice");
  await shows(alice, "#messages li", "alice: hello from alice");
});
