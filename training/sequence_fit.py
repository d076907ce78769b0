"""All-position training (SASRec): one causal pass per user trains every next-item target at once.

The serving model (`training.models.build_model`) reads a window and scores the
item after its newest event. Trained window by window (`training.train.fit`), a
user with n events costs n passes over L steps; a causal Transformer computes
the states of every prefix in one pass, which is how SASRec trains. This module
trains the serving model's own layers (shared weights) on that objective: the
state at each real position is scored against the next item with softmax
cross-entropy, over real positions only (gathered before the item head, so
padding costs nothing there). The targets are exactly the leave-last-out
training targets of `training.dataset.prepare` (positions 1..n-3 of each user);
validation, early stopping and the returned weights work as in `fit`, so the
export and the parity check are unchanged. Needs a model with an item head and
no forecast head. A causal Transformer's last block already holds every
position's state; an LSTM's last layer returns only its final state, so
training runs the same cell (shared weights) with `return_sequences` over the
window. The LSTM has no dropout inside, so its states are dropped at the
model's rate before the item head, as the serving graph's Dropout layer does
when it is trained window by window (the Transformer regularises inside its
blocks and trains as before).

Large catalogues. The full softmax scores every state against all V items, so
its cost grows with V ([targets, V] logits and a dense [V, W] gradient each
step). `negatives=K` scores each state against its own target and K items
shared by the batch instead (sampled softmax, `sampled_softmax_loss`): uniform
without replacement, or by training popularity with the logQ correction, and a
negative equal to a row's target (an accidental hit) is masked out of that
row. The item head is the same tied layer, so the served model and the export
do not change; with K >= the catalogue the loss is the full softmax over the
real items.

Refit (`refit=True`). Early stopping picks the epoch count E on validation;
then a fresh model (same seed, same recipe) trains for exactly E epochs on the
training targets plus each user's validation item (position n-2), with no
validation at all. This is honest: every choice (E, and the recipe) was made on
validation, the test item (position n-1) is never a target and never an input
of a training window, and the test windows already hold the validation item as
history. It only uses the most recent known transition of every user, the one
closest in time to the test item. Validation figures in the history belong to
the first fit only; the refit model has seen the validation targets, so it is
not scored on them.
"""
from __future__ import annotations

import math
import time
from typing import Literal

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from streamer.features import INPUT_NAMES, ITEM_SCORES, OOV_INDEX, Vocabulary, encode_sequence
from training.data.eventlog import EventLog
from training.dataset import Prepared
from training.models import ModelSpec, build_model
from training.ranking_batches import item_validation_score
from training.train import FitConfig, FitResult, seed_everything

FIRST_ITEM = OOV_INDEX + 1  # indices 0 (padding) and 1 (OOV) are never targets nor negatives
Sampler = Literal["uniform", "popularity"]


def user_sequences(log: EventLog, vocab: Vocabulary, window: int,
                   include_validation: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(inputs [N, L], next-item targets [N, L], 0 = no target) covering every training target once.

    A user's training targets are positions 1..n-3 (with `include_validation`, 1..n-2: the
    validation item too; the test item n-1 never); windows end at the last target's window,
    then L, 2L, ... earlier, so a history longer than L is split into several windows. A target
    outside the vocabulary (OOV) is no target.
    """
    log = log.sorted()
    last = 2 if include_validation else 3
    parts, targets = [], []
    for _, start, stop in log.user_runs():
        n = stop - start
        ends = np.arange(n - last, 0, -window)
        if len(ends) == 0:
            continue
        items = np.array([vocab.index(i) for i in log.items[start:stop]], np.int32)
        ts = log.ts[start:stop]
        inputs = encode_sequence(ts, items, np.zeros(n, np.float32), ends, window)
        nxt = encode_sequence(ts, items, np.zeros(n, np.float32), ends + 1, window)["items"]
        parts.append(inputs)
        targets.append(np.where((inputs["mask"] > 0) & (nxt >= FIRST_ITEM), nxt, 0))
    return {k: np.concatenate([p[k] for p in parts]) for k in INPUT_NAMES}, np.concatenate(targets)


def every_position_encoder(model, spec: ModelSpec) -> keras.Model:
    """The serving model's layers up to the state of every position: [B, L, W] (weights shared)."""
    if spec.arch == "transformer":
        return keras.Model(model.inputs, model.get_layer("final_ln").output)
    last = model.get_layer(f"lstm{spec.depth - 1}")
    states = keras.layers.RNN(last.cell, return_sequences=True, name="lstm_every_position")(last.input)
    return keras.Model(model.inputs, states)


class NegativeSampler:
    """K negatives shared by a batch, drawn from the real items 2..V-1, with their logQ correction.

    uniform: K distinct items, each included with probability K / N (N real items);
    popularity: K draws with replacement, q_j proportional to the training count + 1, expected
    count K q_j. The correction is log(expected count), subtracted from each negative's logit, so
    the sum of exp(corrected logits) estimates the partition sum over the other items. K >= N:
    every real item once, correction 0 (the full softmax).
    """

    def __init__(self, vocab_size: int, negatives: int, sampler: Sampler = "uniform",
                 counts: np.ndarray | None = None, seed: int = 0) -> None:
        if negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {negatives}")
        if sampler not in ("uniform", "popularity"):
            raise ValueError(f"sampler must be 'uniform' or 'popularity', got {sampler!r}")
        self.items = vocab_size - FIRST_ITEM
        if self.items < 1:
            raise ValueError("no real items to sample")
        self.k, self.sampler = min(negatives, self.items), sampler
        self.rng = np.random.default_rng(seed)
        if sampler == "popularity":
            weights = np.ones(self.items) if counts is None else np.asarray(counts, np.float64)[FIRST_ITEM:] + 1.0
            self.q = weights / weights.sum()
            self.cdf = np.cumsum(self.q)
            self.cdf[-1] = 1.0

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """(item indices int32 [K], logQ correction float32 [K])."""
        if self.k == self.items:  # every item exactly once
            return np.arange(FIRST_ITEM, FIRST_ITEM + self.items, dtype=np.int32), np.zeros(self.k, np.float32)
        if self.sampler == "uniform":
            picks = self.rng.choice(self.items, self.k, replace=False)
            correction = np.full(self.k, math.log(self.k / self.items), np.float32)
        else:
            picks = np.minimum(np.searchsorted(self.cdf, self.rng.random(self.k), side="right"), self.items - 1)
            correction = np.log(self.k * self.q[picks]).astype(np.float32)
        return (picks + FIRST_ITEM).astype(np.int32), correction


def sampled_softmax_loss(states, targets, embeddings, bias, negatives, correction):
    """Mean cross-entropy of each state's target against the batch's shared negatives.

    states [T, W], targets [T], embeddings [V, W] and bias [V] (the tied item head), negatives [K],
    correction [K] (logQ, `NegativeSampler`). A negative equal to a row's target is masked out of
    that row, so the target never competes with itself."""
    positive = tf.reduce_sum(states * tf.gather(embeddings, targets), axis=-1) + tf.gather(bias, targets)
    logits = tf.matmul(states, tf.gather(embeddings, negatives), transpose_b=True)
    logits += tf.gather(bias, negatives) - correction
    hits = tf.equal(targets[:, None], negatives[None, :])
    logits = tf.where(hits, tf.fill(tf.shape(logits), logits.dtype.min), logits)
    partition = tf.reduce_logsumexp(tf.concat([positive[:, None], logits], axis=1), axis=1)
    return tf.reduce_mean(partition - positive)


def _train_step(encoder, head, optimizer, variables, dropout: float, sampled: bool):
    def loss_of(hidden, targets, negatives, correction):
        real = targets > 0
        states = tf.boolean_mask(hidden, real)
        if dropout:
            states = tf.nn.dropout(states, rate=dropout)
        labels = tf.boolean_mask(targets, real)
        if sampled:
            return sampled_softmax_loss(states, labels, head.embedding.embeddings, head.bias,
                                        negatives, correction)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, head(states)))

    @tf.function(reduce_retracing=True)
    def step(inputs, targets, negatives, correction):
        with tf.GradientTape() as tape:
            loss = loss_of(encoder(inputs, training=True), targets, negatives, correction)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss
    return step


def _train(spec: ModelSpec, data: Prepared, log: EventLog, config: FitConfig, *, epochs: int,
           include_validation: bool, negatives: int | None, sampler: Sampler, validate: bool,
           progress: bool, desc: str) -> FitResult:
    """One training run from a fresh, seeded model: validated and early-stopped, or (not `validate`)
    exactly `epochs` epochs. History entries carry per-epoch `train_seconds` (and `val_seconds`)."""
    seed_everything(config.seed)
    model = build_model(spec)
    encoder = every_position_encoder(model, spec)
    head = model.get_layer(ITEM_SCORES)
    variables = [v for v in model.trainable_variables]
    optimizer = keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay, clipnorm=1.0)
    optimizer.build(variables)
    step = _train_step(encoder, head, optimizer, [v.value for v in variables],
                       dropout=spec.dropout if spec.arch == "lstm" else 0.0, sampled=negatives is not None)
    inputs, targets = user_sequences(log, data.vocab, spec.window, include_validation)
    sampler_ = NegativeSampler(spec.vocab_size, negatives, sampler, data.train_item_counts, config.seed + 1) \
        if negatives is not None else None
    no_negatives = (tf.zeros([0], tf.int32), tf.zeros([0], tf.float32))
    rng = np.random.default_rng(config.seed)
    result, best, best_weights, waited = FitResult(model), -math.inf, None, 0
    started = time.monotonic()
    with tqdm(total=epochs, desc=desc, unit="epoch", disable=not progress) as bar:
        for epoch in range(1, epochs + 1):
            epoch_started = time.monotonic()
            order = rng.permutation(len(targets))
            losses = []
            for lo in range(0, len(order), config.batch_size):
                rows = order[lo:lo + config.batch_size]
                batch = [tf.constant(inputs[k][rows]) for k in INPUT_NAMES]
                drawn = no_negatives if sampler_ is None else tuple(map(tf.constant, sampler_.draw()))
                losses.append(float(step(batch, tf.constant(targets[rows]), *drawn)))
            entry = {"epoch": epoch, "loss": float(np.mean(losses)),
                     "train_seconds": round(time.monotonic() - epoch_started, 2)}
            if validate:
                val_started = time.monotonic()
                report = item_validation_score(model, data.val)
                entry.update(report, val_seconds=round(time.monotonic() - val_started, 2))
                if report["score"] > best:
                    best, best_weights, waited, result.best_epoch = report["score"], model.get_weights(), 0, epoch
                else:
                    waited += 1
            else:
                entry["phase"], result.best_epoch = "refit", epoch
            entry["seconds"] = round(time.monotonic() - started, 1)
            result.history.append(entry)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in entry.items()
                             if k not in ("epoch", "score", "phase", "seconds")})
            if validate and waited >= config.patience:
                result.stopped_by = "early stopping"
                break
            if validate and config.max_minutes is not None and \
                    (time.monotonic() - started) / 60 >= config.max_minutes:
                result.stopped_by = "time budget"
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    result.seconds = time.monotonic() - started
    return result


def fit_all_positions(spec: ModelSpec, data: Prepared, log: EventLog, config: FitConfig,
                      progress: bool = True, negatives: int | None = None, sampler: Sampler = "uniform",
                      refit: bool = False) -> FitResult:
    """Train the serving model with the all-position objective; best validation weights restored.

    `negatives`: None = full softmax over every item; K = sampled softmax with K shared negatives
    per batch (`sampler`: "uniform" or "popularity", logQ-corrected). `refit`: then train a fresh
    model for the best epoch count on training + validation targets (module docstring), if that
    fits into what is left of `config.max_minutes` (estimated from the first fit's epochs);
    otherwise the first fit's model is kept and `stopped_by` says so.
    """
    if spec.vocab_size <= 2 or spec.horizon > 0:
        raise ValueError("all-position training needs a model with an item head and no forecast head")
    common = dict(negatives=negatives, sampler=sampler, progress=progress)
    first = _train(spec, data, log, config, epochs=config.epochs, include_validation=False, validate=True,
                   desc="train all-positions", **common)
    if not refit or first.best_epoch < 1:
        return first
    epoch_seconds = float(np.mean([h["train_seconds"] for h in first.history]))
    needed = first.best_epoch * epoch_seconds * 1.2  # ~1 more target per user (Beauty: +16%)
    left = math.inf if config.max_minutes is None else config.max_minutes * 60 - first.seconds
    if needed > left:
        first.stopped_by += f"; refit skipped (needs ~{needed:.0f} s, {max(left, 0):.0f} s left)"
        return first
    second = _train(spec, data, log, config, epochs=first.best_epoch, include_validation=True, validate=False,
                    desc="refit train+validation", **common)
    first.model = second.model
    first.history += second.history
    first.seconds += second.seconds
    first.stopped_by += f"; refit {first.best_epoch} epochs on train + validation targets"
    return first
