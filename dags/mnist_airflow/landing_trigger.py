"""The triggerer's side of landing events: the Amazon provider's SQS trigger, receiving with
boto3 in a worker thread.

The provider's ``SqsSensorTrigger`` (what ``MessageQueueTrigger(scheme="sqs")`` dispatches to)
talks to SQS through aiobotocore, which is not installed: aiobotocore 3.10 pins botocore below
1.44, under the locked boto3 1.44.5. This subclass keeps the provider's parameters, message
filtering and delete-on-reception (its ``poke``) and gives it a client whose calls run the
locked boto3 in a thread, so the triggerer's event loop never blocks on SQS's long poll.

The triggerer imports this class by its path (``mnist_airflow.landing_trigger``): it runs with
the DAGs folder on its ``PYTHONPATH`` (docs/deployment.md, "Landing events from S3").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger
from airflow.triggers.base import TriggerEvent


class _ThreadedClient:
    """An SQS client whose methods are awaitable: each boto3 call runs in a thread."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        async def call(**kwargs: Any) -> Any:
            return await asyncio.to_thread(method, **kwargs)

        return call


class SqsLandingTrigger(SqsSensorTrigger):
    """``SqsSensorTrigger`` on the standard AWS configuration of the triggerer (credentials,
    region, ``AWS_ENDPOINT_URL_SQS``) through boto3: one event per batch of messages, which
    the triggerer turns into an event of the watched asset, then it starts again."""

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import boto3

        client = _ThreadedClient(await asyncio.to_thread(
            boto3.client, "sqs", region_name=self.region_name))
        while True:
            batch = await self.poke(client=client)
            if batch:
                yield TriggerEvent({"status": "success", "message_batch": batch})
                return
            await asyncio.sleep(self.waiter_delay)
