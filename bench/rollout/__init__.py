"""Rollout benchmark (issue 14): what the DEFAULT rollout policy costs on a replayed dataset at 1,000 events/s.

    .venv/bin/python -m bench.rollout                        # full run, both scenarios, default policy
    .venv/bin/python -m bench.rollout --limit 20000 --policy small.json --no-doc   # smoke run

What it does, in one process tree on this machine (a Tansu broker started here via streamer.embedded,
the real Redis at --redis-url, a fresh key prefix and topic per scenario, deleted at the end):

1. Data: MovieLens ratings (--data, default ../shared/data/movielens/ml-1m-users-1-2999.ratings.dat.gz;
   item = movie, value = rating), cut at the --train-fraction quantile of event time. The models learn
   the part before the cut; the part after it is the live stream, replayed in event-time order at --rate
   events/s (never looped: a second pass would re-send the same event ids).
2. Models, trained once into --models-dir in a subprocess (this process never imports TensorFlow):
   GOOD = LSTM, window 50, next-rating forecast head (H=1), --epochs epochs, <= --max-minutes of fitting;
   BAD = the same recipe, 1 epoch, on the training part with its items shuffled across events.
3. Two scenarios, each on its own `seqcast serve` (in-serve rollout controller on, registry_poll_ms
   500) and topic: (a) primary GOOD, roll out BAD (expected: rolled back); (b) primary BAD, roll out
   GOOD (expected: promoted). The replay starts, --warmup-s later `seqcast rollout start REF` runs
   with the default policy (or --policy FILE), and the rollout's state, decisions and evidence are read
   from Redis (streamer.rollout_state.RolloutStore) until it ends, the replay runs out (then it waits
   --grace-s for a last decision and reports where it stopped), or --timeout seconds pass.
4. Per scenario: the outcome; each decision (phase from -> to, reason) with the seconds since
   `rollout start`, the scored predictions behind it (evidence: per-head n and step_scored) and the
   events replayed by then; the predictions the candidate SERVED to users (read back from the output
   topic: arm "canary", and as the primary after a promotion) and their share of all predictions made
   during the rollout; whether the service kept up (every replayed event predicted exactly once, the
   largest consumer lag seen on its /metrics).

Prints a markdown report, writes --out (JSON) and, unless --no-doc, --doc (docs/rollout_bench.md; text
below its "hand-written notes" marker is kept). --extra-policy FILE (repeatable) runs both scenarios again
under another policy, reported as a separate, clearly labelled configuration.
"""
