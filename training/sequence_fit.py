"""All-position training (SASRec): one causal pass per user trains every next-item target at once.

The serving model (`training.models.build_model`) reads a window and scores the
item after its newest event. Trained window by window (`training.train.fit`), a
user with n events costs n passes over L steps; a causal Transformer computes
the states of every prefix in one pass, which is how SASRec trains. This module
trains the serving model's own layers (shared weights) on that objective: the
state at each real position is scored against the next item with full-softmax
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
"""
from __future__ import annotations

import math
import time

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from streamer.features import INPUT_NAMES, ITEM_SCORES, Vocabulary, encode_sequence
from training.data.eventlog import EventLog
from training.dataset import Prepared
from training.models import ModelSpec, build_model
from training.train import FitConfig, FitResult, seed_everything, validation_score


def user_sequences(log: EventLog, vocab: Vocabulary, window: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(inputs [N, L], next-item targets [N, L], 0 = no target) covering every training target once.

    A user's training targets are positions 1..n-3; windows end at n-3, n-3-L, ...
    so a history longer than L is split into several windows.
    """
    log = log.sorted()
    parts, targets = [], []
    for _, start, stop in log.user_runs():
        n = stop - start
        ends = np.arange(n - 3, 0, -window)
        if len(ends) == 0:
            continue
        items = np.array([vocab.index(i) for i in log.items[start:stop]], np.int32)
        ts = log.ts[start:stop]
        inputs = encode_sequence(ts, items, np.zeros(n, np.float32), ends, window)
        nxt = encode_sequence(ts, items, np.zeros(n, np.float32), ends + 1, window)["items"]
        parts.append(inputs)
        targets.append(np.where(inputs["mask"] > 0, nxt, 0))
    return {k: np.concatenate([p[k] for p in parts]) for k in INPUT_NAMES}, np.concatenate(targets)


def every_position_encoder(model, spec: ModelSpec) -> keras.Model:
    """The serving model's layers up to the state of every position: [B, L, W] (weights shared)."""
    if spec.arch == "transformer":
        return keras.Model(model.inputs, model.get_layer("final_ln").output)
    last = model.get_layer(f"lstm{spec.depth - 1}")
    states = keras.layers.RNN(last.cell, return_sequences=True, name="lstm_every_position")(last.input)
    return keras.Model(model.inputs, states)


def _train_step(encoder, head, optimizer, variables, dropout: float):
    @tf.function(reduce_retracing=True)
    def step(inputs, targets):
        with tf.GradientTape() as tape:
            hidden = encoder(inputs, training=True)  # [B, L, W]
            real = targets > 0
            states = tf.boolean_mask(hidden, real)
            if dropout:
                states = tf.nn.dropout(states, rate=dropout)
            logits = head(states)  # [targets in batch, V]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                tf.boolean_mask(targets, real), logits))
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss
    return step


def fit_all_positions(spec: ModelSpec, data: Prepared, log: EventLog, config: FitConfig,
                      progress: bool = True) -> FitResult:
    """Train the serving model with the all-position objective; best validation weights restored."""
    if spec.vocab_size <= 2 or spec.horizon > 0:
        raise ValueError("all-position training needs a model with an item head and no forecast head")
    seed_everything(config.seed)
    model = build_model(spec)
    encoder = every_position_encoder(model, spec)
    head = model.get_layer(ITEM_SCORES)
    variables = [v for v in model.trainable_variables]
    optimizer = keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay, clipnorm=1.0)
    optimizer.build(variables)
    step = _train_step(encoder, head, optimizer, [v.value for v in variables],
                       dropout=spec.dropout if spec.arch == "lstm" else 0.0)
    inputs, targets = user_sequences(log, data.vocab, spec.window)
    rng = np.random.default_rng(config.seed)
    result, best, best_weights, waited = FitResult(model), -math.inf, None, 0
    started = time.monotonic()
    with tqdm(total=config.epochs, desc="train all-positions", unit="epoch", disable=not progress) as bar:
        for epoch in range(1, config.epochs + 1):
            order = rng.permutation(len(targets))
            losses = []
            for lo in range(0, len(order), config.batch_size):
                rows = order[lo:lo + config.batch_size]
                batch = [tf.constant(inputs[k][rows]) for k in INPUT_NAMES]
                losses.append(float(step(batch, tf.constant(targets[rows]))))
            report = validation_score(model, data.val)
            entry = {"epoch": epoch, "loss": float(np.mean(losses)), **report,
                     "seconds": round(time.monotonic() - started, 1)}
            result.history.append(entry)
            if report["score"] > best:
                best, best_weights, waited, result.best_epoch = report["score"], model.get_weights(), 0, epoch
            else:
                waited += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in entry.items() if k not in ("epoch", "score")})
            if waited >= config.patience:
                result.stopped_by = "early stopping"
                break
            if config.max_minutes is not None and (time.monotonic() - started) / 60 >= config.max_minutes:
                result.stopped_by = "time budget"
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    result.seconds = time.monotonic() - started
    return result
