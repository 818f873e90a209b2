from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric

from gorgon.core.vllm_metrics import VllmName, renamed, vllm_families, with_labels


def families(registry: CollectorRegistry) -> dict[str, Metric]:
    return {family.name: family for family in registry.collect()}


def samples(family: Metric) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value for sample in family.samples}


def test_a_histogram_is_summed_over_the_labels_vllm_has_not_and_keeps_its_buckets() -> None:
    registry = CollectorRegistry()
    ttft = Histogram(
        "ttft_seconds", "ttft", ["endpoint", "model_name"], buckets=(0.1, 1.0), registry=registry
    )
    ttft.labels("/v1/completions", "m").observe(0.05)
    ttft.labels("/v1/chat/completions", "m").observe(0.5)
    ttft.labels("/v1/models", "").observe(0.01)  # no model: not vLLM's to count
    copy = renamed(
        families(registry)["ttft_seconds"], VllmName("ttft_seconds", "vllm:time_to_first_token_seconds")
    )
    model = (("model_name", "m"),)
    assert copy.name == "vllm:time_to_first_token_seconds" and copy.type == "histogram"
    assert samples(copy) == {
        ("vllm:time_to_first_token_seconds_bucket", (("le", "0.1"), *model)): 1.0,
        ("vllm:time_to_first_token_seconds_bucket", (("le", "1.0"), *model)): 2.0,
        ("vllm:time_to_first_token_seconds_bucket", (("le", "+Inf"), *model)): 2.0,
        ("vllm:time_to_first_token_seconds_count", model): 2.0,
        ("vllm:time_to_first_token_seconds_sum", model): 0.55,
    }


def test_a_counter_keeps_a_renamed_label_and_drops_its_creation_time() -> None:
    registry = CollectorRegistry()
    finished = Counter("finished_total", "finished", ["model_name", "reason"], registry=registry)
    finished.labels("m", "stop").inc(3)
    finished.labels("m", "length").inc()
    name = VllmName("finished", "vllm:request_success", (("reason", "finished_reason"),))
    (copy,) = vllm_families(families(registry).values(), [name])
    assert copy.type == "counter"
    assert samples(copy) == {
        ("vllm:request_success_total", (("finished_reason", "stop"), ("model_name", "m"))): 3.0,
        ("vllm:request_success_total", (("finished_reason", "length"), ("model_name", "m"))): 1.0,
    }


def test_only_the_listed_families_are_copied() -> None:
    registry = CollectorRegistry()
    Gauge("running", "running", registry=registry).set(2)
    Gauge("other", "other", registry=registry).set(5)
    labelled = [with_labels(family, {"model_name": "m"}) for family in registry.collect()]
    (copy,) = vllm_families(labelled, [VllmName("running", "vllm:num_requests_running")])
    assert samples(copy) == {("vllm:num_requests_running", (("model_name", "m"),)): 2.0}


def test_process_labels_go_on_every_sample_creation_times_included() -> None:
    registry = CollectorRegistry()
    Counter("tokens_total", "tokens", ["reason"], registry=registry).labels("stop").inc(4)
    (family,) = registry.collect()
    labelled = with_labels(family, {"model_name": "m"})
    assert all(sample.labels["model_name"] == "m" for sample in labelled.samples)
    assert {sample.name for sample in labelled.samples} == {"tokens_total", "tokens_created"}
    assert (labelled.name, labelled.type, labelled.documentation) == ("tokens", "counter", "tokens")
