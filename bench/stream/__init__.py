"""Streaming benchmark (issues 3, 6 and 11): `python -m streamer serve` end to end through Kafka and Redis.

    .venv/bin/python -m bench.stream                  # full run: 200k events, 10k users, both bundles, both clients
    .venv/bin/python -m bench.stream --quick          # smoke run (small sizes; ~2 min with one bundle and client)
    .venv/bin/python -m bench.stream --stages-only    # only the per-stage µs table (in-process, a few minutes)
    .venv/bin/python -m bench.stream --profile        # + a cProfile'd LSTM service run (40k events)

What it does, in one process tree on this machine (a real Tansu broker started here via
streamer.embedded, the real Redis at --redis-url, unique key prefixes, deleted at the end):

1. Bundles: an LSTM and a Transformer (L=50, width 64, item head over the --items catalogue + a
   3-step forecast head) trained on synthetic data (min(--users, 4000) users x 20 events, 1 epoch,
   <= 1 min of fitting each: accuracy does not matter here) with `training.pipeline.train_and_export`
   into --models-dir, once (reused when present; a few minutes). The fitted Keras weights are kept
   beside them for baseline (a). Training runs in a subprocess: this process never imports TensorFlow.
2. Workload: one synthetic event log (--users users, a --items catalogue), replayed in event-time
   order. The first --events events are the backlog; later slices of the same log feed the fixed-rate,
   swap, stage, ceiling and baseline runs, so every user's window keeps growing in time order.
3. Per bundle and per Kafka client of the service (--clients: SEQCAST_KAFKA_CLIENT of each `serve`
   subprocess; the feed and the benchmark's own readers use the default client), each (bundle, client)
   with its own Redis key prefix:
   - sustained: the backlog is pre-loaded into a 1-partition input topic, then a `serve` subprocess
     (assign_all_partitions=true: no consumer group join; offsets still committed under a unique group
     id) drains it. events/s = predictions / (last - first prediction record timestamp); CPU s per 1k
     events = utime+stime (/proc/<pid>/stat, sampled every 0.1 s and interpolated at the first and last
     prediction) per 1000 predictions, for the service, Redis and the Tansu broker. Latency = the
     predictions' own latency_ms (batch consumed -> prediction sent), which under a backlog is bound by
     the batch time (max_poll_records events per batch), not by queueing in Kafka.
   - scale-out: --group-procs services in ONE consumer group drain the same backlog from a topic with
     that many partitions (keyed by user); events/s first to last prediction (and over the 10th-90th
     percentile of prediction times, which drops the join and the uneven tail), duplicates from a
     rebalance counted, CPU = all services together.
   - fixed rates (--rates, default 2,000 and 5,000 events/s): a separate producer process sends the
     rate, paced per event, into a fresh topic the service already reads; its achieved rate and worst
     lag behind schedule are reported. Latency: latency_ms and e2e_ms = prediction record timestamp -
     input record timestamp (the producer's send -> the service's send; ms resolution; includes the
     feed's <= 20 ms batching (FEED_LINGER_MS), the broker hop, the fetch wait and the loop's queueing,
     not the output linger). The LSTM is also run at each rate with --group-procs services in one
     consumer group. A run whose e2e latency grows from its first to its last fifth is flagged "fell
     behind": the service was saturated at that rate.
4. Per bundle, in this process: the onnxruntime-only ceiling (`bundle.predict` on batches of --batch
   encoded, realistic windows, the service's default inference_threads; events/s and CPU µs/event) and
   seqcast's share of it (sustained events/s / ceiling); baseline (a), the seed article's way (Keras
   `model.predict` per event, windows in Python dicts, in a subprocess); baseline (b), naive per event
   (parse, one Redis round trip, one onnxruntime call with batch 1, one produce; `sync` waits for the
   broker's ack each time).
5. Swap cost (issue 6): the LSTM service (first client of --clients) at --swap-rate events/s (default:
   below saturation) while the Transformer, or a byte-identical copy of the LSTM under a new version,
   is promoted mid-run with streamer.registry.Registry(...).promote(<abs bundle path>): p99 latency
   within +-2 s of the first prediction of the new version vs steady state before and after.
6. Per-stage costs of batches of --batch events, in this process, through the service's own
   Service.process with timing wrappers around its steps (bench/stream/stages.py says how; `--stages-only`
   runs just this, after processing the backlog untimed, so that an old checkout gives a "before").
7. The issue 11 targets (LSTM, one process, best client): >= 10,000 events/s sustained, p99 latency_ms
   <= 25 ms at 5,000 events/s, >= 50% of the onnxruntime-only ceiling; each "met" or "NOT met (by X)".

Event-time lag (prediction time - event ts) is not reported: the synthetic timestamps are in 2024, so
it would only measure the calendar. Prints a markdown report and writes --out (JSON).
"""
