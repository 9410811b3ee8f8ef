"""Deployment: measured latency (`latency`), the per-layer latency lookup table used as a search
cost (`lut`), and ONNX / TorchScript export with checks (`export`). Imports only from the
layers below (utils, models, pruning, engine); reads no config."""
