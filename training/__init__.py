"""seqcast's offline half: event logs -> Keras LSTM/Transformer -> evaluated ONNX bundle."""
