"""The fixed chat prompts the engine benchmarks decode (greedily, so every run decodes the same text)."""

from __future__ import annotations

BENCH_PROMPTS = (
    "Explain how a hash map works.",
    "Write a short poem about the sea.",
    "What are the main causes of inflation?",
    "Give three tips for learning a new language.",
    "Describe the water cycle for a ten-year-old.",
    "How does a bicycle stay upright?",
    "Summarise the plot of Romeo and Juliet.",
    "What is the difference between a virus and a bacterium?",
    "Write a Python function that reverses a string.",
    "Why is the sky blue?",
    "List the planets of the solar system in order.",
    "How do vaccines train the immune system?",
    "What makes a good team leader?",
    "Explain recursion with an example.",
    "How do plants make their food?",
    "What should I pack for a weekend hiking trip?",
)
