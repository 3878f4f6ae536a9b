"""mnist_tasks.landing_events and the MNIST_LANDING_EVENTS setting: S3 notifications in, the
increments and batches they name out; anything else ignored, and said why."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mnist_tasks.config import ConfigError, landing_events
from mnist_tasks.landing_events import Marker, parse_markers, route

SOURCE = "s3://data/mnist"
LANDING = "s3://store/scoring/landing"


def _body(*keys: str, bucket: str = "data", event: str = "ObjectCreated:Put") -> str:
    """A message body as S3 sends it to SQS (keys URL-encoded, as S3 does)."""
    from urllib.parse import quote_plus

    records: list[dict[str, Any]] = [
        {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": event,
         "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                "object": {"key": quote_plus(key, safe="/"), "size": 0}}}
        for key in keys]
    return json.dumps({"Records": records})


def test_markers_are_read_from_notification_bodies() -> None:
    bodies = [
        _body("mnist/increments/2026-11-20/_SUCCESS"),
        _body("mnist/increments/with space/_SUCCESS"),  # S3 sends "with+space"
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "data"}),
        _body("mnist/increments/2026-11-20/images-idx3-ubyte.gz"),
        _body("mnist/increments/x/_SUCCESS", event="ObjectRemoved:Delete"),
        "not json",
        json.dumps({"hello": 1}),
    ]
    markers, left_out = parse_markers(bodies)
    assert markers == [Marker("data", "mnist/increments/2026-11-20/_SUCCESS"),
                       Marker("data", "mnist/increments/with space/_SUCCESS")]
    assert [line.split(":")[0] for line in left_out] == [f"message {n}" for n in (3, 4, 5, 6, 7)]
    assert "s3:TestEvent" in left_out[0] and "not a _SUCCESS marker" in left_out[1]
    assert "ObjectRemoved" in left_out[2] and "not JSON" in left_out[3]


def test_markers_are_routed_to_increments_and_batches() -> None:
    markers, _ = parse_markers([
        _body("mnist/increments/inc-2/_SUCCESS", "mnist/increments/inc-1/_SUCCESS",
              "mnist/increments/inc-1/_SUCCESS"),  # a repeat, as at-least-once delivery does
        _body("scoring/landing/batch-07/_SUCCESS", bucket="store"),
        _body("other/increments/inc-3/_SUCCESS"),  # another prefix
        _body("mnist/increments/a/b/_SUCCESS"),  # too deep for an increment id
        _body("scoring/landing/batch-07/_SUCCESS"),  # the landing's prefix in another bucket
    ])
    landed = route(markers, source=SOURCE + "/", landing=LANDING)
    assert landed.increments == ("inc-1", "inc-2")
    assert landed.batches == ("batch-07",)
    assert len(landed.ignored) == 3
    assert "s3://data/other/increments/inc-3/_SUCCESS" in landed.ignored[0]
    assert "'a/b' is not an increment id" in landed.ignored[1]


def test_a_source_outside_s3_receives_nothing() -> None:
    markers, _ = parse_markers([_body("mnist/increments/inc-1/_SUCCESS")])
    landed = route(markers, source="/data/mnist", landing=None)
    assert landed.increments == () and len(landed.ignored) == 1
    # A bucket-root source: increments/ at the top of the bucket.
    markers, _ = parse_markers([_body("increments/inc-1/_SUCCESS")])
    assert route(markers, source="s3://data", landing=None).increments == ("inc-1",)


@pytest.mark.parametrize("value", ["", "  ", "none", "off"])
def test_landing_events_unset_means_polling(value: str) -> None:
    assert landing_events({"MNIST_LANDING_EVENTS": value}) is None
    assert landing_events({}) is None


def test_landing_events_gives_the_queue_url() -> None:
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/mnist-landing"
    assert landing_events({"MNIST_LANDING_EVENTS": f"sqs:{url}"}) == url
    local = "http://127.0.0.1:5000/123456789012/q"  # moto, LocalStack
    assert landing_events({"MNIST_LANDING_EVENTS": f" sqs:{local} "}) == local


@pytest.mark.parametrize("value", ["sqs:", "kafka:https://x/y", "https://sqs.x/1/q",
                                   "sqs:mnist-landing", "sqs:https://host/"])
def test_a_bad_landing_events_value_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^MNIST_LANDING_EVENTS=.*expected sqs:<queue URL>"):
        landing_events({"MNIST_LANDING_EVENTS": value})
