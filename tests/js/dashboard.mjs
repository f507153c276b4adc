// The broker's dashboard in headless Chromium (driven by playwright-core): it lists a client,
// shows its subscriptions, kicks it, and publishes from its form.
// Prints "listed", "subscriptions FILTER", "kicked", then the publish form's result.
// Usage: node dashboard.mjs DASHBOARD_URL CLIENT_ID TOPIC PAYLOAD [SCREENSHOT.png]
import { chromium } from "playwright-core";

const [url, clientId, topic, payload, screenshot] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const external = [];
  page.on("request", (r) => {
    if (!r.url().startsWith(new URL(url).origin)) external.push(r.url());
  });
  await page.goto(url);
  const row = page.locator(`#clients tr[data-client-id="${clientId}"]`);
  await row.waitFor({ timeout: 20000 });
  console.log("listed");
  await row.locator("a").click();
  await page.locator("#subscriptions tbody tr").first().waitFor({ timeout: 20000 });
  console.log("subscriptions " + (await page.textContent("#subscriptions tbody tr td")));
  // A second of history for the chart before the picture.
  await page.waitForTimeout(2500);
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  await row.locator("button").click();
  await row.waitFor({ state: "detached", timeout: 20000 });
  console.log("kicked");
  await page.fill("#pub-topic", topic);
  await page.fill("#pub-payload", payload);
  await page.click("#publish button");
  await page.waitForFunction(() => document.getElementById("pub-result").textContent !== "", null, {
    timeout: 20000,
  });
  console.log(await page.textContent("#pub-result"));
  if (external.length) {
    console.log("external requests: " + external.join(" "));
    process.exitCode = 1;
  }
} finally {
  await browser.close();
}
