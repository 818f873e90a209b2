"""The instruction set the heads are distilled on: templates × topics shipped in `prompts/`.

No dataset can be downloaded where gorgon is built, so the prompts are composed from hand-written templates
and topic lists. The held-out split is made by topic, not by prompt: a topic is held out when a hash of its
text falls in the held-out bucket, and every prompt that mentions a held-out topic is held out. Training thus
never sees a held-out prompt, nor any prompt about a held-out topic, and the held-out accuracy measures
generalisation to unseen subjects rather than to unseen phrasings of seen ones.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources

HELD_OUT_BUCKETS = 10
"""One topic in HELD_OUT_BUCKETS (by hash) is held out."""

PROMPT_SET_SEED = 0
"""The order of the prompt set is a fixed shuffle, so `--num-prompts N` always means the same N prompts."""


class Split(StrEnum):
    TRAIN = "train"
    HELD_OUT = "held-out"


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    topics: tuple[str, ...]

    @property
    def split(self) -> Split:
        return Split.HELD_OUT if any(is_held_out_topic(topic) for topic in self.topics) else Split.TRAIN


def is_held_out_topic(topic: str) -> bool:
    digest = hashlib.sha256(topic.strip().lower().encode()).digest()
    return int.from_bytes(digest[:8], "big") % HELD_OUT_BUCKETS == 0


def _load_json(name: str) -> dict:
    return json.loads(
        resources.files("gorgon.training").joinpath("prompts", name).read_text(encoding="utf-8")
    )


def _single_topic_prompts(templates: dict[str, list[str]], topics: dict) -> Iterator[Prompt]:
    for kind in ("activity", "subject", "code_task"):
        for topic in topics[kind]:
            for template in templates[kind]:
                yield Prompt(template.format(topic=topic), (topic,))
    for domain_topics in topics["concept"].values():
        for topic in domain_topics:
            for template in templates["concept"]:
                yield Prompt(template.format(topic=topic), (topic,))


def _pair_prompts(templates: dict[str, list[str]], topics: dict) -> Iterator[Prompt]:
    for domain_topics in topics["concept"].values():
        for first, second in itertools.pairwise(domain_topics):
            for template in templates["pair"]:
                yield Prompt(template.format(first=first, second=second), (first, second))


def all_prompts() -> list[Prompt]:
    """Every prompt of the set, in a fixed pseudo-random order, without duplicates."""
    templates = _load_json("templates.json")
    topics = _load_json("topics.json")
    unique: dict[str, Prompt] = {}
    for prompt in (*_single_topic_prompts(templates, topics), *_pair_prompts(templates, topics)):
        unique.setdefault(prompt.text, prompt)
    ordered = sorted(unique.values(), key=lambda prompt: prompt.text)
    random.Random(PROMPT_SET_SEED).shuffle(ordered)
    return ordered


def prompts_for(split: Split, limit: int | None = None) -> list[str]:
    """The first `limit` prompt texts of one split (all of them when limit is None)."""
    texts = [prompt.text for prompt in all_prompts() if prompt.split is split]
    return texts if limit is None else texts[:limit]
