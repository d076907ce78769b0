#!/usr/bin/env node
// Send seqcast events to Kafka: JSON lines from a file or stdin (and/or --demo N made-up ones).
// Each event is checked against schemas/v1/event.schema.json first; an invalid one is refused
// here (reason on stderr), so it never reaches the service's dead-letter topic.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const readline = require("node:readline");
const { parseArgs } = require("node:util");
const Ajv2020 = require("ajv/dist/2020"); // the draft 2020-12 build of ajv (plain "ajv" is draft-07)
const { Kafka, Partitioners, logLevel } = require("kafkajs");

const USAGE = `usage: node producer.js [--bootstrap HOST:PORT] [--topic TOPIC] [--schema PATH] [--demo N]
                          [--check] [--no-idempotence] [FILE | -]
  FILE                JSON lines to send ('-' = stdin; default: stdin unless --demo)
  --bootstrap         broker list (default: $KAFKA_BOOTSTRAP or localhost:9092)
  --topic             topic to send to (default: events)
  --schema            event JSON Schema (default: ../../schemas/v1/event.schema.json)
  --demo N            also send N generated demo events
  --check             only validate: print 'N<TAB>accept' or 'N<TAB>reject<TAB>why' per line
  --no-idempotence    plain producer (needed on Tansu, which refuses kafkajs's InitProducerId)
Exit status: 0 all sent, 1 some refused as invalid, 2 some not delivered.`;
const MAX_BYTES = 64 * 1024; // the service refuses larger messages (a limit JSON Schema cannot state)

function options() {
  try {
    const { values, positionals } = parseArgs({ allowPositionals: true, options: {
      help: { type: "boolean", short: "h" }, bootstrap: { type: "string" }, topic: { type: "string" },
      schema: { type: "string" }, demo: { type: "string" }, check: { type: "boolean" },
      "no-idempotence": { type: "boolean" },
    } });
    if (values.help) { console.log(USAGE); process.exit(0); }
    const demo = Number(values.demo || 0);
    if (!Number.isInteger(demo) || demo < 0 || positionals.length > 1) throw new Error("bad arguments");
    return {
      file: positionals[0], demo, check: !!values.check, idempotent: !values["no-idempotence"],
      bootstrap: values.bootstrap || process.env.KAFKA_BOOTSTRAP || "localhost:9092",
      topic: values.topic || "events",
      schema: values.schema || path.join(__dirname, "..", "..", "schemas", "v1", "event.schema.json"),
    };
  } catch (err) {
    console.error(`${err.message}\n${USAGE}`);
    process.exit(64);
  }
}

// Every string (keys too) must be valid Unicode: a lone surrogate cannot be sent as UTF-8.
const wellFormed = (v) => (typeof v === "string" ? v.isWellFormed()
  : v !== null && typeof v === "object" ? Object.entries(v).every(([k, x]) => k.isWellFormed() && wellFormed(x))
  : true);

function* demoEvents(n) { // yields [label, line]
  const run = Math.random().toString(16).slice(2, 10); // unique ids per run: a repeated id is a replay
  for (let i = 0; i < n; i++) {
    const event = { event_id: `demo-${run}-${i}`, user_id: `demo-user-${i % 3}`, ts: Date.now() / 1000,
      item_id: ["1196", "260", "2571", "1210"][i % 4], value: Math.round(10 + Math.random() * 40) / 10,
      type: "rating" };
    yield [`demo ${i + 1}`, JSON.stringify(event)];
  }
}

async function* numberedLines(stream) { // yields [line number, line]
  let n = 0;
  for await (const line of readline.createInterface({ input: stream, crlfDelay: Infinity })) yield [++n, line];
}

async function main() {
  const opts = options();
  // No ajv options needed: strict mode knows `examples`/`description`, and the long ts `pattern`
  // compiles with ajv's default `u` (unicode) RegExp flag.
  const ajv = new Ajv2020();
  const validate = ajv.compile(JSON.parse(fs.readFileSync(opts.schema, "utf8")));
  const check = (line) => { // {event, value} or {why}
    let event;
    try { event = JSON.parse(line); } catch (err) { return { why: `not JSON: ${err.message}` }; }
    if (!validate(event)) return { why: ajv.errorsText(validate.errors) };
    if (!wellFormed(event)) return { why: "a string holds a lone surrogate (not UTF-8)" };
    const value = JSON.stringify(event);
    const size = Buffer.byteLength(value);
    return size > MAX_BYTES ? { why: `${size} bytes > ${MAX_BYTES}` } : { event, value };
  };
  const sources = [demoEvents(opts.demo)];
  if (opts.file || !opts.demo) {
    sources.push(numberedLines(!opts.file || opts.file === "-" ? process.stdin : fs.createReadStream(opts.file)));
  }

  const kafka = new Kafka({ clientId: "seqcast-example-producer", brokers: opts.bootstrap.split(","),
    logLevel: logLevel.WARN }); // kafkajs logs INFO to stdout otherwise
  const producer = kafka.producer({
    idempotent: opts.idempotent, // a retried send cannot duplicate or reorder a partition's messages
    // murmur2, like the Java client and the Python example: a user's events land on the same
    // partition whichever client sent them (librdkafka's own default differs)
    createPartitioner: Partitioners.DefaultPartitioner,
  });
  let sent = 0, refused = 0, failed = 0, batch = [];
  const flush = async () => {
    if (!batch.length) return;
    try { // acks -1 ("all"): the write is on every in-sync replica before send() resolves
      await producer.send({ topic: opts.topic, acks: -1, messages: batch });
      sent += batch.length;
    } catch (err) {
      failed += batch.length;
      console.error(`delivery failed for ${batch.length} events: ${err.message}`);
    }
    batch = [];
  };
  if (!opts.check) {
    try {
      await producer.connect(); // an idempotent producer asks for its producer id here
    } catch (err) {
      const hint = opts.idempotent ? " (on Tansu: --no-idempotence)" : "";
      console.error(`cannot start the producer: ${err.message}${hint}`);
      await producer.disconnect(); // close the broker connections, or the process never exits
      return 2;
    }
  }
  for (const source of sources) {
    for await (const [label, line] of source) {
      if (!line.trim()) continue;
      const { event, value, why } = check(line);
      if (opts.check) {
        console.log(event ? `${label}\taccept` : `${label}\treject\t${why}`);
      } else if (!event) {
        console.error(`line ${label}: refused: ${why}`);
      } else {
        batch.push({ key: event.user_id, value }); // key = user_id: a user's events stay in order on one partition
        if (batch.length >= 500) await flush();
      }
      if (!event) refused++;
    }
  }
  if (!opts.check) {
    await flush();
    await producer.disconnect();
    console.error(`sent ${sent}, refused ${refused}, failed ${failed}`);
  }
  return failed ? 2 : refused ? 1 : 0;
}

main().then((code) => { process.exitCode = code; }, (err) => { console.error(err); process.exitCode = 2; });
