"""The NoMIRACL-compatible answer parser of the probe's generation mode: model text -> answer.

Shared by evaluation (``scoring.generate_prompts``) and anything else that parses probe outputs.
"""

from __future__ import annotations

import re

from xlalign.probe.build import ANSWER_ABSENT, ANSWER_PRESENT

INVALID = "Invalid"

# NoMIRACL's VanillaTemplate(count=10) builds f"\[(\d+|{max_count})\]"; spelled out here.
_REFERENCE_RE = re.compile(r"\[(\d+|10)\]")


def parse_nomiracl(text) -> str:
    """Map a model output to ANSWER_PRESENT, ANSWER_ABSENT or "Invalid", as NoMIRACL does.

    Mirrors ``nomiracl.prompts.template.VanillaTemplate().postprocess`` (nomiracl 1.0.0) branch for
    branch: newlines and tabs become spaces, the text is lower-cased (``str.lower``, not casefold),
    then

    1. both phrases present -> Invalid;
    2. "i don't know" present -> ANSWER_ABSENT;
    3. "yes, answer is present" present -> ANSWER_PRESENT;
    4. "answer is present" -> ANSWER_PRESENT, then "answer is not present" -> ANSWER_ABSENT;
    5. a "[n]" reference in a response shorter than 10 characters -> ANSWER_PRESENT;
    6. anything else (including "") -> Invalid.

    Nothing is stripped and "\\r" is kept, exactly as in the reference; a curly apostrophe
    ("I don’t know") is therefore Invalid there and here.

    Where we deliberately differ:

    * Both phrases present. The reference tests ``count_word(response, answer) > 1``, but
      ``count_word`` compares whitespace-split single words with the multi-word phrase, so it is
      always 0 and the branch always ends in Invalid. We return Invalid directly instead of
      "taking the phrase that occurs first": with a 12-token budget both phrases appear almost only
      when the model echoes the instruction's '"Yes, answer is present" or "I don't know"', and the
      first-phrase rule would score every such echo as "present" -- a free 50% on a balanced test
      set for a model that did not answer. Same result as the reference, without its dead code.
    * Input that is not ``str``. The reference raises (``None`` has no ``.replace``; ``bytes``
      gets a TypeError); we decode ``bytes`` as UTF-8 with replacement characters and map any
      other non-string (e.g. ``None`` from a failed generation) to Invalid, so one bad output
      cannot abort a long evaluation.
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return INVALID
    response = text.replace("\n", " ").replace("\t", " ").lower()
    has_present = ANSWER_PRESENT.lower() in response
    has_absent = ANSWER_ABSENT.lower() in response
    if has_present and has_absent:
        return INVALID
    if has_absent:
        return ANSWER_ABSENT
    if has_present:
        return ANSWER_PRESENT
    if "answer is present" in response:
        return ANSWER_PRESENT
    if "answer is not present" in response:
        return ANSWER_ABSENT
    if _REFERENCE_RE.search(response) and len(response) < 10:
        return ANSWER_PRESENT
    return INVALID
