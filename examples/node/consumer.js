#!/usr/bin/env node
// Read seqcast predictions in a consumer group, once per event_id, and print them.
// Delivery is at-least-once: after a service crash, a rebalance or a broker outage the same
// prediction (same event_id, same content) can arrive again, so this keeps the first per
// event_id and drops the rest.
"use strict";
const { parseArgs } = require("node:util");
const { Kafka, logLevel } = require("kafkajs");

const USAGE = `usage: node consumer.js [--bootstrap HOST:PORT] [--topic TOPIC] [--group ID] [--dedup-window N]
                          [--limit N] [--json] [--session-timeout-ms MS]
  --bootstrap           broker list (default: $KAFKA_BOOTSTRAP or localhost:9092)
  --topic               topic to read (default: predictions)
  --group               consumer group id (default: seqcast-example-consumer)
  --dedup-window N      remember the last N event_ids (default: 100000)
  --limit N             stop after N new predictions (default 0: never; Ctrl-C stops too)
  --json                print each prediction as one JSON line
  --session-timeout-ms  group session timeout (default: 30000; on Tansu a group join takes about half)`;

function options() {
  try {
    const { values } = parseArgs({ options: {
      help: { type: "boolean", short: "h" }, bootstrap: { type: "string" }, topic: { type: "string" },
      group: { type: "string" }, "dedup-window": { type: "string" }, limit: { type: "string" },
      json: { type: "boolean" }, "session-timeout-ms": { type: "string" },
    } });
    if (values.help) { console.log(USAGE); process.exit(0); }
    const count = (name, dflt) => {
      const n = Number(values[name] ?? dflt);
      if (!Number.isInteger(n) || n < 0) throw new Error(`bad --${name}`);
      return n;
    };
    return {
      bootstrap: values.bootstrap || process.env.KAFKA_BOOTSTRAP || "localhost:9092",
      topic: values.topic || "predictions", group: values.group || "seqcast-example-consumer",
      dedupWindow: count("dedup-window", 100000), limit: count("limit", 0), json: !!values.json,
      sessionTimeout: count("session-timeout-ms", 30000),
    };
  } catch (err) {
    console.error(`${err.message}\n${USAGE}`);
    process.exit(64);
  }
}

// The last `size` event_ids, least recently seen dropped first (a Map iterates oldest first).
// Bounded is enough: a prediction comes again only from the stretch the service had not committed
// when it crashed or lost its partitions (seconds of traffic), so a duplicate is never more than
// that many messages behind its first copy. Size the window well above that stretch.
function seenIds(size) {
  const ids = new Map();
  return (id) => {
    const seen = ids.delete(id);
    ids.set(id, true);
    if (ids.size > size) ids.delete(ids.keys().next().value);
    return !seen;
  };
}

function line(p) {
  const top3 = (p.recommendations || []).slice(0, 3).map((r) => r.item_id).join(",") || "-";
  const forecast0 = p.forecast ? p.forecast[0] : null; // a head the model lacks is absent; a step may be null
  return `${p.event_id}\t${p.user_id}\ttop3=${top3}\tforecast0=${forecast0}`;
}

function parsePrediction(message) { // the prediction, or null (logged) for a message that is not one
  try {
    const p = JSON.parse(message.value);
    if (typeof p?.event_id === "string") return p;
    throw new Error("no event_id");
  } catch (err) {
    console.error(`skipped offset ${message.offset}: ${err.message}`); // not ours: skip it rather than stop
    return null;
  }
}

async function main() {
  const opts = options();
  const firstTime = seenIds(opts.dedupWindow);
  const kafka = new Kafka({ clientId: "seqcast-example-consumer", brokers: opts.bootstrap.split(","),
    logLevel: logLevel.WARN }); // kafkajs logs INFO to stdout otherwise
  const consumer = kafka.consumer({ groupId: opts.group, sessionTimeout: opts.sessionTimeout,
    heartbeatInterval: Math.min(3000, Math.floor(opts.sessionTimeout / 3)) });
  let printed = 0, stopping = null;
  // disconnect() waits for the batch in hand (its handled offsets are then committed) and leaves the group.
  const stop = () => stopping ||= consumer.disconnect().then(() => console.error(`${printed} predictions`));
  process.on("SIGINT", stop); // Ctrl-C
  process.on("SIGTERM", stop);
  await consumer.connect();
  await consumer.subscribe({ topic: opts.topic, fromBeginning: true }); // a new group starts at the beginning
  // At-least-once: we resolve an offset only after handling its message (printed, or dropped as a
  // duplicate), and kafkajs (autoCommit, the default) commits the resolved offsets when eachBatch
  // returns: one commit per batch, never one for a message we did not handle. A crash re-reads at
  // most the batch in hand, and the dedup window drops what was already printed.
  await consumer.run({
    eachBatchAutoResolve: false,
    eachBatch: async ({ batch, resolveOffset, heartbeat, isRunning, isStale }) => {
      for (const message of batch.messages) {
        if ((opts.limit && printed >= opts.limit) || !isRunning() || isStale()) break;
        const p = parsePrediction(message);
        if (p && firstTime(p.event_id)) {
          console.log(opts.json ? JSON.stringify(p) : line(p));
          printed++;
        }
        resolveOffset(message.offset);
        await heartbeat();
      }
      if (opts.limit && printed >= opts.limit) stop(); // not awaited: disconnect waits for this batch to end
    },
  });
}

main().catch((err) => { console.error(err); process.exit(1); }); // e.g. the broker cannot be reached
