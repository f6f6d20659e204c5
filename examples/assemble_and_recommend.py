"""Assemble published components, check what was loaded, and recommend for a history.

Run after `make demo`, which publishes the demo's components into demo_out/hub-cache:

    .venv/bin/python examples/assemble_and_recommend.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_CACHE", "demo_out/hub-cache")

from pmmrec import PMMRec, load_component  # after the Hub settings above
from pmmrec.api import recommend

text = load_component("hub:pmmrec-demo/pmmrec-text@v1")  # each reference pins its own revision
user = load_component("hub:pmmrec-demo/pmmrec-user@v1")
model = PMMRec.assemble(text=text, user=user)
print("assembled:", sorted(model.components()), "notes:", model.assembly_notes)

# A history of target-domain movies (item ids of demo_out/data/target/items.tsv), most recent last.
for entry in recommend(model, "demo_out/data/target", history=["50", "181", "172"], k=5, exclude_seen=True):
    print(f"{entry.rank}. {entry.text} (score {entry.score:.2f})")
