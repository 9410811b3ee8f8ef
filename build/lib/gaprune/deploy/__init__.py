"""Deployment: measured latency (`latency`), the per-layer latency lookup table used as a search
cost (`lut`), and ONNX / TorchScript export of a model with checks (`export`). Sits between
pruning/ and engine/: imports only utils, models and pruning; reads no config
(`gaprune.engine.export` exports a checkpoint)."""
