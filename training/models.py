"""Keras 3 sequence models: an LSTM and a causal Transformer over one window.

Both read the four inputs that `streamer.features` defines (items, values,
dts, mask; left-padded to L) and end in up to two heads:

- `item_scores` [B, V]: a score for every vocabulary index (next-item logits),
  tied to the item embedding, as SASRec does: fewer weights, better ranking.
- `forecast` [B, H]: the next H values in scaled units.

Forecasting options (all off by default): `revin` instance-normalises the
value channel and de-normalises the forecast; `patch_len` > 0 groups the
window into L/patch_len non-overlapping patches that become the tokens
(PatchTST), read by a flatten head that maps every token state directly to the
H steps; `linear_head` adds a linear map of the (normalised) lookback to the
forecast (DLinear/RLinear), so the encoder only has to learn the residual;
`linear_input` says what that map reads: "norm", the RevIN-normalised
lookback (RLinear); "raw", the scaled values before RevIN (DLinear), with the
encoder's output rescaled by the window's std: forecast = linear(values) +
std * encoder; "both" (RevIN only), two maps: forecast = (encoder +
linear(norm)) * std + mean + linear_raw(values), so a start can be either
ridge or a blend (`training.linear_init.set_linear_heads`).

RevIN's std is floored at `REVIN_STD_FLOOR` (values are z-scored per
channel, so that is 5% of the series' own spread): a sensor stuck on one value
for a whole window has zero spread, and an epsilon-sized std would turn the
next step's change into a normalised target of ~1e3.

Only ops that tf2onnx exports and onnxruntime runs are used: `relu`, not
`gelu` (which exports an `Erfc` node onnxruntime rejects). Every exported model
is checked against Keras in `training/export.py`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
from keras import layers, ops

from streamer.features import FORECAST, ITEM_SCORES


LINEAR_INPUTS = ("norm", "raw", "both")
REVIN_STD_FLOOR = 0.05  # least per-window std (scaled units); `training.linear_init._normalise` uses it too


@dataclass(frozen=True)
class ModelSpec:
    """Architecture knobs; stored in the manifest as `hyperparameters`."""

    arch: str = "lstm"  # "lstm" | "transformer"
    window: int = 50
    horizon: int = 0  # 0 = no forecast head
    vocab_size: int = 0  # 0 = no item head (else includes the 2 reserved indices)
    width: int = 64
    depth: int = 1
    heads: int = 1
    dropout: float = 0.1
    revin: bool = False  # instance-normalise the value channel (RevIN) for forecasting
    patch_len: int = 0  # > 0: tokens are patches of the value channel (forecast-only models)
    linear_head: bool = False  # add a linear lookback -> horizon map to the forecast head
    linear_input: str = "norm"  # what the linear map reads: "norm" (after RevIN, if any), "raw" or "both"

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.arch not in ("lstm", "transformer"):
            raise ValueError(f"arch must be 'lstm' or 'transformer', got {self.arch!r}")
        if self.horizon <= 0 and self.vocab_size <= 2:
            raise ValueError("a model needs an item head (vocab_size > 2) or a forecast head (horizon > 0)")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.patch_len and (self.vocab_size > 2 or self.horizon <= 0 or self.window % self.patch_len):
            raise ValueError(f"patch_len {self.patch_len} needs a forecast-only model whose window "
                             f"{self.window} is a multiple of it")
        if self.linear_head and self.horizon <= 0:
            raise ValueError("linear_head needs a forecast head (horizon > 0)")
        if self.linear_input not in LINEAR_INPUTS:
            raise ValueError(f"linear_input must be one of {LINEAR_INPUTS}, got {self.linear_input!r}")
        if self.linear_head and self.linear_input == "both" and not self.revin:
            raise ValueError("linear_input 'both' needs revin (without it both maps read the same values)")


@keras.saving.register_keras_serializable("seqcast")
class TiedItemScores(layers.Layer):
    """Scores = h · E^T + b, with E the item embedding matrix (weight tying)."""

    def __init__(self, embedding: layers.Embedding, **kwargs) -> None:
        super().__init__(**kwargs)
        self.embedding = embedding

    def build(self, input_shape) -> None:
        self.bias = self.add_weight(shape=(self.embedding.input_dim,), initializer="zeros", name="bias")

    def call(self, hidden):
        return ops.matmul(hidden, ops.transpose(self.embedding.embeddings)) + self.bias


@keras.saving.register_keras_serializable("seqcast")
class CausalMask(layers.Layer):
    """[B, L] padding mask -> [B, L, L] boolean attention mask: causal (unless `causal=False`:
    patch tokens all lie in the past, so they may see each other) and no padded keys."""

    def __init__(self, causal: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.causal = causal

    def call(self, mask):
        length = ops.shape(mask)[1]
        rows = ops.expand_dims(ops.arange(length), 1)
        cols = ops.expand_dims(ops.arange(length), 0)
        causal = ops.cast(ops.greater_equal(rows, cols), "float32")
        if not self.causal:
            causal = ops.ones_like(causal)
        keys = ops.expand_dims(mask, 1)  # [B, 1, L]
        allowed = causal[None, :, :] * keys
        # a padded query row would attend to nothing; let it see itself so softmax stays finite
        eye = ops.eye(length, dtype="float32")[None, :, :]
        return ops.greater(ops.maximum(allowed, eye), 0.5)

    def get_config(self) -> dict:
        return {**super().get_config(), "causal": self.causal}


@keras.saving.register_keras_serializable("seqcast")
class LastQueryMask(layers.Layer):
    """[B, L] padding mask -> [B, 1, L]: `CausalMask`'s last row, computed alone (the newest
    position sees every real key, and itself), for `_last_query_block`."""

    def call(self, mask):
        length = ops.shape(mask)[1]
        newest = ops.cast(ops.equal(ops.arange(length), length - 1), "float32")[None, None, :]
        return ops.greater(ops.maximum(ops.expand_dims(mask, 1), newest), 0.5)


@keras.saving.register_keras_serializable("seqcast")
class Positions(layers.Layer):
    """Learned absolute position embeddings, added to the sequence."""

    def __init__(self, window: int, width: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.window, self.width = window, width

    def build(self, input_shape) -> None:
        self.table = self.add_weight(shape=(self.window, self.width), initializer="glorot_uniform", name="table")

    def call(self, x):
        return x + self.table[None, :, :]

    def get_config(self) -> dict:
        return {**super().get_config(), "window": self.window, "width": self.width}


@keras.saving.register_keras_serializable("seqcast")
class InstanceNorm(layers.Layer):
    """RevIN statistics: per-window mean/std of the real (masked) values, the std floored at
    `floor` so that a flat window (a stuck sensor) cannot blow up the normalised values."""

    def __init__(self, floor: float = REVIN_STD_FLOOR, **kwargs) -> None:
        super().__init__(**kwargs)
        self.floor = float(floor)

    def call(self, values, mask):
        count = ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)
        mean = ops.sum(values * mask, axis=1, keepdims=True) / count
        var = ops.sum(ops.square(values - mean) * mask, axis=1, keepdims=True) / count
        std = ops.sqrt(ops.maximum(var, self.floor ** 2))
        return (values - mean) / std * mask, mean, std

    def get_config(self) -> dict:
        return {**super().get_config(), "floor": self.floor}


def _transformer_block(x, attention_mask, spec: ModelSpec, index: int):
    """Pre-norm block: x + MHA(LN(x)); x + FFN(LN(x)). relu, never gelu (see module doc)."""
    h = layers.LayerNormalization(epsilon=1e-6, name=f"block{index}_ln1")(x)
    h = layers.MultiHeadAttention(spec.heads, spec.width // spec.heads, dropout=spec.dropout,
                                  name=f"block{index}_mha")(h, h, attention_mask=attention_mask)
    x = layers.Add()([x, layers.Dropout(spec.dropout)(h)])
    h = layers.LayerNormalization(epsilon=1e-6, name=f"block{index}_ln2")(x)
    h = layers.Dense(spec.width * 2, activation="relu", name=f"block{index}_ffn1")(h)
    h = layers.Dense(spec.width, name=f"block{index}_ffn2")(layers.Dropout(spec.dropout)(h))
    return layers.Add()([x, layers.Dropout(spec.dropout)(h)])


def _last_query_block(x, mask, spec: ModelSpec, index: int):
    """`_transformer_block` for the newest position only: [B, T, width] -> [B, 1, width].

    Same layers (names, weights), same arithmetic per row: keys and values still read every
    position, but the query, the attention row, the residual and the FFN are computed for the
    last position alone, since no output reads the others. Serving graphs only (see
    `serving_model`); training keeps the full block, whose every-position states the
    all-position objective needs."""
    h = layers.LayerNormalization(epsilon=1e-6, name=f"block{index}_ln1")(x)
    query = h[:, -1:, :]
    attention_mask = LastQueryMask(name="last_query_mask")(mask)
    h = layers.MultiHeadAttention(spec.heads, spec.width // spec.heads, dropout=spec.dropout,
                                  name=f"block{index}_mha")(query, h, attention_mask=attention_mask)
    x = layers.Add()([x[:, -1:, :], h])
    h = layers.LayerNormalization(epsilon=1e-6, name=f"block{index}_ln2")(x)
    h = layers.Dense(spec.width * 2, activation="relu", name=f"block{index}_ffn1")(h)
    h = layers.Dense(spec.width, name=f"block{index}_ffn2")(h)
    return layers.Add()([x, h])


def _encode(spec: ModelSpec, sequence, mask, every_token: bool = False, last_query: bool = False):
    """[B, T, width] -> [B, width]: the state after the newest token (last position);
    with `every_token`, [B, T, width]: every token's state (patch models' flatten head).
    `last_query` (serving graphs of causal Transformers): the final block computes the newest
    position only (`_last_query_block`); same outputs, ~L times less work in that block."""
    tokens = spec.window // spec.patch_len if spec.patch_len else spec.window
    if spec.arch == "lstm":
        h = sequence
        for index in range(spec.depth):
            last = index == spec.depth - 1 and not every_token
            h = layers.LSTM(spec.width, return_sequences=not last, dropout=0.0, name=f"lstm{index}")(h)
        return h
    h = Positions(tokens, spec.width, name="positions")(sequence)
    h = layers.Dropout(spec.dropout)(h)
    last_query = last_query and not every_token
    full_blocks = spec.depth - 1 if last_query else spec.depth
    if full_blocks:
        attention_mask = CausalMask(causal=not spec.patch_len, name="causal_mask")(mask)
    for index in range(full_blocks):
        h = _transformer_block(h, attention_mask, spec, index)
    if last_query:
        h = _last_query_block(h, mask, spec, spec.depth - 1)
    h = layers.LayerNormalization(epsilon=1e-6, name="final_ln")(h)
    return h if every_token else h[:, -1, :]


def _patch_forecast(spec: ModelSpec, norm_values, dts, mask):
    """PatchTST-style: [B, L] channels -> [B, L/P, 3P] patch tokens -> encoder -> flatten -> [B, H]."""
    tokens, P = spec.window // spec.patch_len, spec.patch_len
    steps = layers.Concatenate(axis=-1)([ops.expand_dims(t, -1) for t in (norm_values, dts, mask)])
    patches = layers.Reshape((tokens, 3 * P), name="patches")(steps)
    token_mask = ops.max(layers.Reshape((tokens, P))(mask), axis=-1)  # a patch with any real event
    x = layers.Dense(spec.width, name="patch_proj")(patches) * ops.expand_dims(token_mask, -1)
    hidden = _encode(spec, x, token_mask, every_token=True)
    hidden = layers.Dropout(spec.dropout)(layers.Flatten(name="flatten_head")(hidden))
    return layers.Dense(spec.horizon, name="forecast_dense")(hidden)


def build_model(spec: ModelSpec, last_query: bool = False) -> keras.Model:
    """The serving model: four window inputs -> {item_scores?, forecast?}.

    `last_query`: the inference form of the same function (see `serving_model`); the model keeps
    its spec as `seqcast_spec`, so the exporter can build that form from a trained model."""
    spec.validate()
    model = _build(spec, last_query)
    model.seqcast_spec = spec
    return model


def serving_model(model: keras.Model) -> keras.Model:
    """The graph to export for a trained `model`: a causal Transformer's final block computed for
    the newest position only (its outputs read nothing else), with the trained weights copied by
    layer name; any other model as it is. The exporter's parity check compares the export with
    `model` itself, so a rewrite that changed an output would fail the export."""
    spec = getattr(model, "seqcast_spec", None)
    if spec is None or spec.arch != "transformer" or spec.patch_len:
        return model
    lean = _build(spec, last_query=True)
    for layer in lean.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    lean.seqcast_spec = spec
    return lean


def _build(spec: ModelSpec, last_query: bool) -> keras.Model:
    """`build_model` without the spec attribute."""
    L = spec.window
    items = keras.Input((L,), dtype="int32", name="items")
    values = keras.Input((L,), dtype="float32", name="values")
    dts = keras.Input((L,), dtype="float32", name="dts")
    mask = keras.Input((L,), dtype="float32", name="mask")

    norm_values, mean, std = (values, None, None)
    if spec.revin:
        norm_values, mean, std = InstanceNorm(name="revin")(values, mask)
    if spec.patch_len:
        return _forecast_model(spec, [items, values, dts, mask], _patch_forecast(spec, norm_values, dts, mask),
                               values, norm_values, mean, std)
    numeric = layers.Concatenate(axis=-1)([ops.expand_dims(norm_values, -1), ops.expand_dims(dts, -1)])
    x = layers.Dense(spec.width, name="numeric_proj")(numeric)
    embedding = None
    if spec.vocab_size > 2:
        embedding = layers.Embedding(spec.vocab_size, spec.width, name="item_embedding")
        x = layers.Add()([x, embedding(items)])
    x = x * ops.expand_dims(mask, -1)
    hidden = _encode(spec, x, mask, last_query=last_query)
    hidden = layers.Dropout(spec.dropout)(hidden)

    outputs = {}
    if embedding is not None:
        outputs[ITEM_SCORES] = TiedItemScores(embedding, name=ITEM_SCORES)(hidden)
    if spec.horizon > 0:
        forecast = layers.Dense(spec.horizon, name="forecast_dense")(hidden)
        return _forecast_model(spec, [items, values, dts, mask], forecast, values, norm_values, mean, std, outputs)
    return keras.Model([items, values, dts, mask], outputs, name=f"seqcast_{spec.arch}")


def _forecast_model(spec: ModelSpec, inputs, forecast, values, norm_values, mean, std,
                    outputs=None) -> keras.Model:
    """Add the optional linear lookback map(s), undo RevIN, and wrap the model."""
    if spec.linear_head and spec.linear_input == "both":
        forecast = layers.Add()([forecast, layers.Dense(spec.horizon, name="linear_head")(norm_values)])
        linear = layers.Dense(spec.horizon, name="linear_raw_head")(values)
        forecast = layers.Add()([forecast * std + mean, linear])
    elif spec.linear_head and spec.linear_input == "raw":
        linear = layers.Dense(spec.horizon, name="linear_raw_head")(values)
        forecast = layers.Add()([forecast * std if spec.revin else forecast, linear])
    else:
        if spec.linear_head:
            forecast = layers.Add()([forecast, layers.Dense(spec.horizon, name="linear_head")(norm_values)])
        if spec.revin:
            forecast = forecast * std + mean
    outputs = {**(outputs or {}), FORECAST: layers.Identity(name=FORECAST)(forecast)}
    return keras.Model(inputs, outputs, name=f"seqcast_{spec.arch}")
