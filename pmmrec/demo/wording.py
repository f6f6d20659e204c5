"""The words around the demo's numbers: what each row is, what each column means, and one verdict sentence per
comparison, written from the comparison's own numbers (issue 26: the verdict is not left to the reader).

Generic over rows and comparisons: a row without an entry in ROW_GLOSSARY is still listed (as "see
docs/benchmarks.md"), and a comparison's sentence needs only the fields `pmmrec.stats.Comparison.as_dict` gives
plus its `subset` label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# One line per row: what it is, in a newcomer's words.
ROW_GLOSSARY: dict[str, str] = {
    "popularity": "the items most often seen in training, for everyone (recency window chosen on validation); no model",
    "content-knn": "the items whose raw MiniLM text embedding is closest to the user's history; nothing trained",
    "sasrec-id": "one learned vector per item id (SASRec), trained on the target; it cannot score an item it never "
    "saw in training",
    "pmmrec-scratch": "PMMRec (text encoder + user encoder) trained on the target only, from the packaged MiniLM "
    "weights",
    "pmmrec-transfer": "PMMRec pre-trained on the source domain, then fine-tuned on the target",
    "pmmrec-zero-shot": "the source-domain PMMRec used as it is: nothing trained on the target",
    "transfer-text-only": "pmmrec-transfer keeping only the pre-trained text encoder (fresh user encoder)",
    "transfer-user-only": "pmmrec-transfer keeping only the pre-trained user encoder (fresh text projection)",
    "transfer-no-nid": "pmmrec-transfer whose pre-training left out NID (noised item detection)",
    "transfer-no-rcl": "pmmrec-transfer whose pre-training left out RCL (robustness-aware contrastive learning)",
    "mm-scratch": "PMMRec reading text and images, trained on the target only",
    "mm-transfer": "PMMRec reading text and images, pre-trained on the source domain, then fine-tuned",
    "mm-transfer-no-nicl": "mm-transfer whose pre-training left out NICL (the text-image contrastive loss)",
    "mm-zero-shot": "the source-domain text + image PMMRec used as it is: nothing trained on the target",
}
COLUMNS = (
    "NDCG@10 (the headline): 1 / log2(1 + rank) of the user's held-out next item when it is in the top 10, else 0, "
    "averaged over users; higher is better. HR@10: share of users whose next item is in the top 10. MRR@10: 1 / rank "
    "likewise. New-item users: only the users whose next item is a new item (never in a training sequence). "
    "[low, high]: the 95% interval of the mean."
)


def row_line(name: str) -> str:
    """'name: what it is' (one line)."""
    return f"{name}: {ROW_GLOSSARY.get(name, 'see docs/benchmarks.md')}"


def p_text(value: float) -> str:
    """A p-value in a sentence: 3 decimals, or '< 0.001'."""
    return f"{value:.3f}" if value >= 0.0005 else "< 0.001"


def p_is(value: float) -> str:
    """'p = 0.012' or 'p < 0.001'."""
    text = p_text(value)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def who(test: Mapping[str, Any]) -> str:
    """The users a comparison is about, in words."""
    subset, users = test.get("subset", "all"), test["users"]
    if subset == "all":
        return f"all {users} test users"
    if subset == "new":
        return f"the {users} new-item users"
    return f"the {users} {subset} users"


def bootstrap_name(test: Mapping[str, Any]) -> str:
    """The seed x user bootstrap, named for what it resamples here."""
    several = test.get("seeds_a", 1) > 1 or test.get("seeds_b", 1) > 1
    return "seed-aware bootstrap" if several else "bootstrap over users"


def _smallest_sign_flip_p(differing: int) -> float:
    """The smallest two-sided p the exact sign-flip test can give with `differing` non-zero differences."""
    return 1.0 if differing == 0 else min(1.0, 2.0 / 2.0**differing)


def why_not(test: Mapping[str, Any], alpha: float, family: int) -> tuple[str, str]:
    """(short reason for the table, explanation for the sentence) of a comparison that is not significant."""
    flip, boot = test["p_sign_flip"], test["p_bootstrap"]
    flip_text = f"the sign-flip test says {p_is(flip)}"
    boot_text = f"the {bootstrap_name(test)} says {p_is(boot)}"
    if test["differing"] == 0:
        return "identical", "no user's rank differs"
    if flip < alpha <= boot:
        cause = (
            "so the difference may come from the training seeds"
            if "seed" in bootstrap_name(test)
            else "the two tests disagree and a claim needs both"
        )
        return "tests disagree", f"{flip_text} but {boot_text}: {cause}"
    if boot < alpha <= flip:
        smallest = _smallest_sign_flip_p(test["differing"])
        cause = (
            f"only {test['differing']} users differ, and with so few the sign-flip test cannot go below "
            f"{p_is(smallest)}"
            if smallest >= alpha
            else "the two tests disagree and a claim needs both"
        )
        return "tests disagree", f"{boot_text} but {flip_text}: {cause}"
    if max(flip, boot) < alpha:
        return (
            f"Holm over {family} tests",
            f"both tests say p < {alpha:g} (sign-flip {p_is(flip)}, {bootstrap_name(test)} {p_is(boot)}), but Holm's "
            f"correction for the {family} comparisons of this table gives {p_is(test['p_holm'])}",
        )
    return f"p >= {alpha:g}", f"sign-flip {p_is(flip)}, {bootstrap_name(test)} {p_is(boot)}"


def verdict_sentence(test: Mapping[str, Any], alpha: float = 0.05, family: int = 1) -> str:
    """One sentence: is A better than B on these users, by how much, and on what evidence.

    family: the number of comparisons Holm's correction ran over (the table's size).
    """
    a, b = test["a"], test["b"]
    diff = test["difference"]
    numbers = (
        f"{diff:+.4f} NDCG@10 [95% CI {test['ci_low']:+.4f}, {test['ci_high']:+.4f}], "
        f"{test['differing']} of {test['users']} users differ"
    )
    if test["significant"]:
        better = "better" if diff > 0 else "worse"
        return f"{a} is {better} than {b} on {who(test)}: {numbers}, Holm {p_is(test['p_holm'])}."
    _, explanation = why_not(test, alpha, family)
    return f"{a} and {b} are not significantly different on {who(test)}: {numbers}; {explanation}."


def significance_cell(test: Mapping[str, Any], alpha: float = 0.05, family: int = 1) -> str:
    """The table's 'significant' cell: yes, or no with its reason."""
    if test["significant"]:
        return "yes"
    return f"no, {why_not(test, alpha, family)[0]}"


def best_rows(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Which row has the highest mean NDCG@10, over all users and over new-item users (plain statements)."""
    lines = []
    for key, label in (("ndcg@10", "all test users"), ("new_ndcg@10", "new-item users")):
        scored = [row for row in rows if row.get(key) is not None]
        if not scored:
            continue
        best = max(scored, key=lambda row: row[key])
        low, high = best[f"{key}_ci"]
        lines.append(f"Highest mean NDCG@10 on {label}: {best['model']}, {best[key]:.4f} [{low:.4f}, {high:.4f}].")
    return lines


def verdicts(tests: Sequence[Mapping[str, Any]], alpha: float = 0.05) -> list[str]:
    """One verdict sentence per comparison (Holm's family is the whole table)."""
    return [verdict_sentence(test, alpha, len(tests)) for test in tests]
