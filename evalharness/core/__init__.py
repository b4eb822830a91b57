"""The core layer: the records that flow between layers, statistics, errors, paths, provenance, prompt
rendering and model references. It imports nothing else of evalharness; every layer may use it.

Modules: ``records`` (Verdict, Score, GenRecord, the comparability key, ``unmeasured_reason``), ``stats``
(CIs, clustered SEs, Holm/BH, MDE), ``errors`` (EvalHarnessError and its kinds, with file/line/field), ``paths``
(results root, atomic writes), ``provenance`` (versions, hashes, timestamps), ``prompts`` (the one chat
renderer), ``models`` (ModelRef: bundled alias, local folder, LoRA adapter), ``jsonl`` (line-numbered JSONL).
"""
