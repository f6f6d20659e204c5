"""Assemble published components, embed a catalogue from its texts, and recommend for a history.

Run after `make demo`, which publishes the demo's components into demo_out/hub-cache:

    .venv/bin/python examples/assemble_and_recommend.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_CACHE", "demo_out/hub-cache")

from pmmrec import PMMRec  # after the Hub settings above
from pmmrec.data import load_dataset

# References as strings: pmmrec.json records each one and the commit it resolved to.
model = PMMRec.assemble(text="hub:pmmrec-demo/pmmrec-text@v1", user="hub:pmmrec-demo/pmmrec-user@v1")
print("assembled:", sorted(model.components()), "notes:", model.assembly_notes)

catalogue = load_dataset("demo_out/data/target")  # or any list of item texts: items need no training
embeddings = model.encode_items(texts=catalogue.item_texts)  # [N, d], like SentenceTransformer.encode
position = {item_id: row for row, item_id in enumerate(catalogue.item_ids)}
history = [position[item_id] for item_id in ("50", "181", "172")]  # most recent last
scores, rows = model.recommend(history, embeddings, k=5)  # seen items are left out by default
for rank, (score, row) in enumerate(zip(scores.tolist(), rows.tolist(), strict=True), start=1):
    print(f"{rank}. {catalogue.item_texts[row]} (score {score:.2f})")
