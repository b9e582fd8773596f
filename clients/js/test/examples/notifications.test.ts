// examples/notifications: JWT auth, and one user channel (`notifications#USER`) per user.
import { randomBytes } from "node:crypto";
import { expect, it } from "vitest";
import type { Herald as HeraldClass } from "../../src/index.js";
import { startExample, startNode } from "../harness.js";
import { examplePages, live, post, shows } from "./pages.js";

const open = examplePages();

it("a notification reaches its user's page and no other user's", async () => {
  const secret = randomBytes(32).toString("hex");
  const node = await startNode(["--jwt-secret", secret]);
  const app = await startExample("notifications", ["--herald", node.http], { JWT_SECRET: secret });
  // Alice logs in with the toy form; Bob's page is opened as the form would open it.
  const alice = await open(app.url);
  await alice.fill("#login [name=user]", "alice");
  await alice.click("#login button");
  const bob = await open(`${app.url}?user=bob`);
  await Promise.all([live(alice), live(bob)]);

  await post(`${app.url}notify`, { user: "alice", text: "your order shipped" });
  await shows(alice, "#notifications li", "your order shipped");
  // Bob's own notification comes after Alice's; Alice's never reaches him.
  await bob.fill("#notify [name=text]", "a note to self");
  await bob.click("#notify button");
  await shows(bob, "#notifications li", "a note to self");
  expect(await bob.textContent("#notifications")).not.toContain("your order shipped");
  expect(await alice.textContent("#notifications")).not.toContain("a note to self");

  // With Bob's token, Alice's channel is refused outright.
  const refused = await bob.evaluate(async (url) => {
    const { Herald } = window as unknown as { Herald: typeof HeraldClass };
    const herald = new Herald(url, { getToken: () => fetch("/token?user=bob").then((r) => r.text()) });
    const channel = herald.channel("notifications#alice");
    const outcome = await new Promise<string>((resolve) => {
      channel.onError((err) => resolve(err.code));
      channel.onState((state) => state === "subscribed" && resolve(state));
    });
    herald.disconnect();
    return outcome;
  }, node.http);
  expect(refused).toBe("forbidden");
});
