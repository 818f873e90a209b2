"""The engine's CPU kernels: the lean Llama forward, fused and prepacked linear products, exact attention.

Each computes what transformers computes, bit for bit or to the rounding the decode step needs (a query or a row
rounds the same whatever shares its call), in fewer operations than the generic path. `engine/parts.py` chooses
them by device.
"""
