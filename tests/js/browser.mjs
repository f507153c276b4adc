// A page in headless Chromium (driven by playwright-core) loads MQTT.js from the installed
// package, connects to ternmq over WebSocket and shows the first message on its topic.
// Prints "subscribed" once the page's subscription is made, then the text the page shows.
// Usage: node browser.mjs WS_URL TOPIC
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const [url, topic] = process.argv.slice(2);
// MQTT.js's browser bundle, from the installed package.
const bundle = fileURLToPath(new URL("./node_modules/mqtt/dist/mqtt.min.js", import.meta.url));
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  await page.setContent("<!doctype html><title>ternmq</title><p id=message>waiting</p>");
  await page.addScriptTag({ path: bundle });
  await page.evaluate(
    ([url, topic]) =>
      new Promise((resolve, reject) => {
        const client = window.mqtt.connect(url, { clientId: "chromium", connectTimeout: 10000 });
        client.on("error", reject);
        client.on("message", (_t, payload) => {
          document.getElementById("message").textContent = payload.toString();
        });
        client.on("connect", () =>
          client.subscribe(topic, { qos: 1 }, (err) => (err ? reject(err) : resolve())),
        );
      }),
    [url, topic],
  );
  console.log("subscribed");
  await page.waitForFunction(() => document.getElementById("message").textContent !== "waiting", null, {
    timeout: 20000,
  });
  console.log(await page.textContent("#message"));
} finally {
  await browser.close();
}
