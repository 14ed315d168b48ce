"""LLM backends behind one batched interface: ``chat(requests) -> results``, plain dicts both ways.

A request holds chat ``messages``, a ``seed``, sampling settings and an optional JSON ``schema``; a result
holds the raw ``text``, the ``parsed`` JSON (or None), the ``finish_reason``, token counts and an ``error``.
Plain dicts keep results msgpack-cacheable, so stages replay them from the run's call cache.
"""
