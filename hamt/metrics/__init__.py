"""Every measure the project reports, defined once.

- ``lm``: sliding-window NLL, token perplexity, bits per byte, word perplexity;
- ``systems``: FLOPs per token, MFU's peak, peak memory, throughput, decoding latency and state bytes;
- ``memory``: the holographic memory's retrieval fidelity and slot utilisation;
- ``recall``: multi-query associative recall (MQAR), exact match on the query positions.
"""
