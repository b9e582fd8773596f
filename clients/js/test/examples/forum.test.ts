// examples/forum: one channel per thread; the backend publishes each new post to its thread.
import { expect, it } from "vitest";
import { startExample, startNode } from "../harness.js";
import { examplePages, live, post, shows } from "./pages.js";

const open = examplePages();

it("a reply posted in a thread appears in every page of that thread, and only there", async () => {
  // With an API key on the node, as in production; the backend passes it on.
  const key = "forum-example-api-key";
  const node = await startNode(["--api-key", key]);
  const app = await startExample("forum", ["--herald", node.http, "--api-key", key]);
  const thread = (id: number) => new URL(`/threads/${id}`, app.url).href;
  const [writer, reader, elsewhere] = [await open(thread(1)), await open(thread(1)), await open(thread(2))];
  await Promise.all([live(writer), live(reader), live(elsewhere)]);
  await writer.fill("[name=author]", "frank");
  await writer.fill("[name=text]", "first reply");
  await writer.click("button");
  await shows(reader, "#posts li", "frank: first reply");
  await shows(writer, "#posts li", "frank: first reply");
  // Thread 2 gets its own post; by then, thread 1's would have arrived too.
  await post(`${thread(2)}/posts`, { author: "grace", text: "another thread" });
  await shows(elsewhere, "#posts li", "grace: another thread");
  expect(await elsewhere.textContent("#posts")).not.toContain("first reply");
  expect(await reader.textContent("#posts")).not.toContain("another thread");
});
