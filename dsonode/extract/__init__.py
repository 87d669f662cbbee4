"""Rollouts -> experiences (Training-Free GRPO style).

`rollouts` parses and groups the JSONL format (pure); `offline` is the default extractor
(contrastive and extractive, runs with the node's encoder alone); `cli` is `dsonode ingest`.
Every extractor implements `offline.Extractor`: `extract(groups) -> Extraction`, so an
LLM-backed one can stand beside the offline one.
"""
