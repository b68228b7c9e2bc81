"""What the reader had to interpret in an input's pixels, said once per input.

A ``Note`` is one thing done to an image that its file or array did not state: transparency
flattened, a float range assumed, a 16-bit image that uses under 1/16 of its range, frames dropped,
channels converted, a resize from another size or aspect (``KINDS``). ``anogan.data.reading`` and
``anogan.data.images`` make them; every consumer says them the same way:

* one line per input, ``"<file or input[i]>: <note>; <note>"`` (``line``): ``predict.py``'s log,
  the CSV's ``notes`` column (the part after the colon), ``Predictions.warnings``, the server's
  response;
* one summary line for many inputs, counts per kind (``summary``): a training folder's run log
  (counts also in ``splits.json`` → ``read_notes``) and ``predict.py`` on a folder.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# The kinds, in the order a line lists them (reading, then the model's input).
KINDS = (
    "transparency",  # alpha flattened on black or white (data.alpha)
    "float range",  # a float file read as intensity in [0, 1]
    "low 16-bit range",  # 16-bit values all under 4096 (1/16 of 65535), kept as stored
    "32-bit range",  # 32-bit integers outside 0..65535, min-max scaled per image
    "frames",  # the first frame of several
    "channels",  # grey copied to 3 channels, or colour turned grey
    "resized",  # another size or aspect than the model's
)


@dataclass(frozen=True)
class Note:
    """One interpretation: ``kind`` (one of ``KINDS``) and ``text`` (what was done, in words)."""

    kind: str
    text: str


def text(notes: Sequence[Note]) -> str:
    """The notes of one input joined in ``KINDS`` order ("" for none): the CSV's ``notes`` cell."""
    ordered = sorted(notes, key=lambda n: KINDS.index(n.kind))
    return "; ".join(n.text for n in ordered)


def line(source: str, notes: Sequence[Note]) -> str:
    """The one warning line of an input: ``"<source>: <notes>"``."""
    return f"{source}: {text(notes)}"


def counts(all_notes: Iterable[Sequence[Note]]) -> dict[str, int]:
    """Inputs per kind (an input counts once per kind), in ``KINDS`` order, kinds seen only."""
    seen = Counter(kind for notes in all_notes for kind in {n.kind for n in notes})
    return {k: seen[k] for k in KINDS if seen[k]}


def summary(all_notes: Sequence[Sequence[Note]], where: str) -> str | None:
    """One line for many inputs (None when no input has a note), e.g. ``"3 of 20 images read with
    interpretation: 2 resized, 1 transparency; <where>"``."""
    per_kind = counts(all_notes)
    if not per_kind:
        return None
    noted = sum(1 for notes in all_notes if notes)
    kinds = ", ".join(f"{n} {k}" for k, n in per_kind.items())
    return f"{noted} of {len(all_notes)} images read with interpretation: {kinds}; {where}"


def manifest_entry(sources: Sequence[str], all_notes: Sequence[Sequence[Note]]) -> dict:
    """``splits.json`` → ``read_notes``: images read, how many have a note, inputs per kind, and one
    example per kind (the first file and what was done to it)."""
    examples: dict[str, dict] = {}
    for source, notes in zip(sources, all_notes):
        for note in notes:
            examples.setdefault(note.kind, {"file": source, "note": note.text})
    return {
        "images_read": len(all_notes),
        "with_notes": sum(1 for notes in all_notes if notes),
        "counts": counts(all_notes),
        "examples": {k: examples[k] for k in KINDS if k in examples},
    }
