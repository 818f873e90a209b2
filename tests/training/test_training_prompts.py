from __future__ import annotations

import pytest

from gorgon.training.prompts import Split, all_prompts, is_held_out_topic, prompts_for


def test_the_set_holds_thousands_of_distinct_prompts() -> None:
    texts = [prompt.text for prompt in all_prompts()]
    assert 1000 <= len(texts) <= 10_000
    assert len(set(texts)) == len(texts)


def test_held_out_prompts_never_appear_in_training() -> None:
    train = set(prompts_for(Split.TRAIN))
    held_out = set(prompts_for(Split.HELD_OUT))
    assert len(held_out) >= 200
    assert not train & held_out


def test_no_training_prompt_mentions_a_held_out_topic() -> None:
    prompts = all_prompts()
    held_out_topics = {topic for prompt in prompts for topic in prompt.topics if is_held_out_topic(topic)}
    assert held_out_topics
    for prompt in prompts:
        if prompt.split is Split.TRAIN:
            assert not set(prompt.topics) & held_out_topics, prompt.text


def test_a_limit_takes_a_stable_prefix() -> None:
    assert prompts_for(Split.TRAIN, 50) == prompts_for(Split.TRAIN)[:50]
    assert prompts_for(Split.TRAIN, 50) == prompts_for(Split.TRAIN, 50)


@pytest.mark.parametrize("split", list(Split))
def test_every_template_is_filled(split: Split) -> None:
    assert not [text for text in prompts_for(split) if "{" in text or "}" in text]
