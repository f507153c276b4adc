// MQTT.js against a ternmq WebSocket listener: subscribes, publishes at QoS 0, 1 and 2 and a
// retained message, and prints what arrived, sorted. Usage: node mqttjs.mjs URL [CA_FILE]
import fs from "node:fs";
import mqtt from "mqtt";

const [url, ca] = process.argv.slice(2);
const options = { clientId: "mqttjs-" + process.pid, protocolVersion: 5, connectTimeout: 10000 };
if (ca) options.ca = fs.readFileSync(ca);
const fail = (e) => {
  console.error(String(e));
  process.exit(1);
};
setTimeout(() => fail("timed out"), 20000).unref();

const client = mqtt.connect(url, options);
client.on("error", fail);
const got = [];
client.on("message", (topic, payload, packet) => {
  got.push(`${topic} ${packet.qos} ${payload.toString()} ${packet.retain ? 1 : 0}`);
  if (got.length === 4) done();
});
client.on("connect", async () => {
  await client.subscribeAsync("js/#", { qos: 2 });
  for (const qos of [0, 1, 2]) await client.publishAsync(`js/q${qos}`, `hello ${qos}`, { qos });
  await client.publishAsync("js/kept", "retained", { qos: 1, retain: true });
});

async function done() {
  await client.endAsync();
  // A second client sees the retained message.
  const second = mqtt.connect(url, { ...options, clientId: "mqttjs2-" + process.pid });
  second.on("error", fail);
  second.on("message", async (topic, payload, packet) => {
    console.log(got.sort().join("\n"));
    console.log(`second: ${payload.toString()} ${packet.retain ? 1 : 0}`);
    await second.endAsync();
    process.exit(0);
  });
  second.on("connect", () => second.subscribe("js/kept", { qos: 1 }));
}
