"""seqcast's online half: Kafka events -> Redis windows -> onnxruntime -> predictions.

Never imports TensorFlow or the `training` package.
"""
