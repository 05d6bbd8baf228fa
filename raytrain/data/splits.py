"""Leak-free splits, exact-duplicate removal, real/fake balance and source mixing.

Pure functions over manifest row dicts (see `raytrain.data.layouts` for the keys
they read: ``clips``, ``official_split``, ``group``, ``label``, ``source``,
``content_hash``). No Ray here: `raytrain.data.ingest` composes them.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict

# Default shares of a source without an official split: by source clip, not by file.
SPLIT_RATIOS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
# When a group's files carry different official splits, the group follows the most held-out one.
_HELD_OUT_FIRST = ("test", "val", "train")


def assign_groups(entries: list[dict]) -> list[dict]:
    """Set ``group`` on each entry: entries sharing a source clip, directly or through others, share a group.

    Union-find over ``clips`` (FF++ ``000_003`` joins originals 000 and 003);
    the group is the component's smallest clip key, so it does not depend on
    the order of the entries.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for entry in entries:
        first = find(entry["clips"][0])
        for clip in entry["clips"][1:]:
            other = find(clip)
            if other != first:
                low, high = sorted((first, other))
                parent[high] = low
                first = low
    return [{**e, "group": find(e["clips"][0])} for e in entries]


def hash_unit(*parts) -> float:
    """A number in [0, 1) fixed by ``parts``: the same on every machine and every run."""
    digest = hashlib.sha1(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stable_sample(entries: list[dict], n: int, *, seed: int = 0) -> list[dict]:
    """``n`` entries picked by a hash of ``(seed, id)``: the same pick every run, and a larger
    ``n`` only adds entries (the seed's ``--max-videos`` quick runs)."""
    return sorted(entries, key=lambda e: hash_unit(seed, e["id"]))[:n]


def assign_splits(rows: list[dict], *, seed: int = 0, ratios=SPLIT_RATIOS) -> list[dict]:
    """Set ``split`` on each row, keeping every group in one split where the data allow it.

    A row's official split always wins. Rows without one follow their
    group's official split when the group has one (the most held-out one if
    several), else a split drawn from a hash of ``(seed, group)`` with the
    given ratios: deterministic, and stable when files are added (a group
    never moves because another appeared). Groups whose official splits
    disagree stay split as the dataset says; `leaking_groups` lists them.
    """
    total = sum(r for _, r in ratios)
    official: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row.get("official_split"):
            official[row["group"]].add(row["official_split"])
    out = []
    for row in rows:
        split = row.get("official_split")
        if not split and official[row["group"]]:
            split = min(official[row["group"]], key=lambda s: (_HELD_OUT_FIRST + (s,)).index(s))
        if not split:
            u, acc = hash_unit(seed, row["group"]) * total, 0.0
            split = ratios[-1][0]
            for name, ratio in ratios:
                acc += ratio
                if u < acc:
                    split = name
                    break
        out.append({**row, "split": split})
    return out


def leaking_groups(rows: list[dict]) -> dict[str, list[str]]:
    """group -> its splits, for groups found in more than one split (should be empty)."""
    splits: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        splits[row["group"]].add(row["split"])
    return {g: sorted(s) for g, s in sorted(splits.items()) if len(s) > 1}


def drop_duplicates(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Keep the first row of each content hash; the others become rejects naming the kept file.

    Copies labelled differently (real in one place, fake in another) are all
    rejected: neither label can be trusted.
    """
    by_hash: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_hash[row["content_hash"]].append(row)
    kept, dropped = [], []
    for row in rows:
        copies = by_hash[row["content_hash"]]
        first = copies[0]
        if len({c["label"] for c in copies}) > 1:
            others = ", ".join(f"{c['path']} ({c['label']})" for c in copies if c is not row)
            reason = f"label conflict: labelled {row['label']} here, but the same content is {others}"
        elif row is first:
            kept.append(row)
            continue
        else:
            reason = f"exact duplicate of {first['path']} (same content hash)"
        dropped.append({"path": row["path"], "source": row["source"], "reason": reason})
    return kept, dropped


def balance_weights(rows: list[dict], mix: dict[str, float] | None = None, *, split: str = "train",
                    iterations: int = 100) -> list[dict]:
    """Set ``weight`` on the rows of ``split`` (others get None = 1) so training draws are
    50% real / 50% fake (the seed's advice) and each source's share follows ``mix``.

    ``mix`` maps source -> relative weight; a source it does not name weighs 1,
    0 leaves a source out of training. Each (source, label) cell starts at an
    equal share and iterative proportional fitting then matches both
    marginals (sources to ``mix``, labels to one half each); when a source has
    one label only, both can still be met by shifting the others. Weights have
    mean 1 over the split.
    """
    mix = dict(mix or {})
    train = [i for i, r in enumerate(rows) if r["split"] == split]
    sources = sorted({rows[i]["source"] for i in train})
    unknown = sorted(set(mix) - {r["source"] for r in rows})
    if unknown:
        raise ValueError(f"--mix names unknown source(s) {unknown}; sources are {sorted({r['source'] for r in rows})}")
    if any(w < 0 for w in mix.values()):
        raise ValueError(f"mixing weights must be >= 0, got {mix}")
    share = {s: mix.get(s, 1.0) for s in sources}
    if train and sum(share.values()) <= 0:
        raise ValueError(f"mixing weights leave nothing to train on: {share}")
    share = {s: w / sum(share.values()) for s, w in share.items()}
    cells = Counter((rows[i]["source"], rows[i]["label"]) for i in train)
    labels = sorted({lb for _, lb in cells})
    weight = {i: share[rows[i]["source"]] / cells[rows[i]["source"], rows[i]["label"]] for i in train}
    for _ in range(iterations):
        for field, targets in (("source", share), ("label", {lb: 1 / len(labels) for lb in labels})):
            mass = defaultdict(float)
            for i in train:
                mass[rows[i][field]] += weight[i]
            for i in train:
                m = mass[rows[i][field]]
                weight[i] = weight[i] * targets[rows[i][field]] / m if m > 0 else 0.0
    scale = len(train) / sum(weight.values()) if train else 1.0
    return [{**r, "weight": weight[i] * scale if i in weight else None} for i, r in enumerate(rows)]


def reason_kind(reason: str) -> str:
    """A reject reason without its particulars (paths, quoted values, numbers, asides), for counting."""
    kind = " ".join(re.sub(r"\([^)]*\)|'[^']*'|\S*/\S*|\d+", "…", reason).split())
    return re.sub(r"…(\s*…)+", "…", kind)


def summarise(rows: list[dict], rejects: list[dict], *, split: str = "train", mix: dict[str, float] | None = None,
              seed: int = 0) -> dict:
    """Counts per source x category x split x label, rejects by reason, leaks, and the training mix achieved."""
    counts = Counter((r["source"], r["category"], r["split"], r["label"]) for r in rows)
    train = [r for r in rows if r["split"] == split]
    mass = sum(r.get("weight") or 0.0 for r in train) or 1.0

    def by(field: str) -> dict[str, float]:
        return {k: round(sum(r.get("weight") or 0.0 for r in train if r[field] == k) / mass, 4)
                for k in sorted({r[field] for r in train})}

    reasons = Counter(reason_kind(r["reason"]) for r in rejects)
    return {
        "seed": seed,
        "rows": len(rows),
        "rejects": len(rejects),
        "duplicates": sum(r["reason"].startswith(("exact duplicate", "label conflict")) for r in rejects),
        "reject_reasons": dict(sorted(reasons.items())),
        "counts": [{"source": s, "category": c, "split": sp, "label": lb, "count": n}
                   for (s, c, sp, lb), n in sorted(counts.items())],
        "leaking_groups": leaking_groups(rows),
        "training_mix": {
            "split": split,
            "requested": dict(sorted((mix or {}).items())),
            "label_share": by("label"),
            "source_share": by("source"),
            "files": dict(Counter(r["label"] for r in train)),
        },
    }


def format_table(summary: dict) -> str:
    """The summary's counts as a fixed-width table, one line per source x category x split x label."""
    head = ("source", "category", "split", "label", "count")
    lines = [head] + [tuple(str(c[k]) for k in head) for c in summary["counts"]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(v.ljust(w) if i < 4 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths)))
           for line in lines]
    mix = summary["training_mix"]
    out.append(f"{summary['rows']} files, {summary['rejects']} rejected ({summary['duplicates']} duplicates); "
               f"training draws by label {mix['label_share']}, by source {mix['source_share']}")
    if summary["leaking_groups"]:
        out.append(f"warning: {len(summary['leaking_groups'])} source clip group(s) span splits "
                   "because the datasets' official splits put them there")
    return "\n".join(out)
