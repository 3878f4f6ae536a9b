"""The label queue: a scored batch's least confident images, exported for people to label.

Their labels come back as feedback (``image_id,label``, :mod:`mnist_tasks.feedback`) and
become training increments, so the images the model is least sure of are the ones it learns
from next. Under ``scoring/<model>/labeling/<batch>/v<NNNNNN>/`` in the store::

    00000.png ...          the images, least confident first
    queue.csv              file, image_id, predicted, probability, runner_up
    label-studio.json      Label Studio tasks, the prediction as a pre-annotation

    export_label_queue(cfg, store, batch, version, ids, images, predictions)
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from mnist_tasks.config import ScoringConfig
from mnist_tasks.scoring_index import root
from mnist_tasks.storage import Store

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


def label_queue_prefix(cfg: ScoringConfig, batch: str, version: int) -> str:
    """Where the label queue of ``batch`` scored with ``version`` is."""
    return f"{root(cfg.model_name)}/labeling/{batch}/v{version:06d}"


def export_label_queue(cfg: ScoringConfig, store: Store, batch: str, version: int,
                       ids: Sequence[str], images: np.ndarray,
                       predictions: Mapping[str, np.ndarray]) -> str | None:
    """Export the batch's ``cfg.label_queue`` least confident images: PNG files, ``queue.csv``
    and ``label-studio.json``. Objects are created only if absent, so a re-run is a no-op.

    Args:
        ids: the images' ids, in the order of ``images`` and ``predictions``.
        predictions: ``predicted``, ``probability`` and ``runner_up``, one row per image.

    Returns:
        The queue's URI, or None when nothing is exported (``label_queue`` 0).
    """
    import numpy as np
    from PIL import Image

    k = min(cfg.label_queue, len(ids))
    if k == 0:
        return None
    prefix = label_queue_prefix(cfg, batch, version)
    order = np.argsort(predictions["probability"], kind="stable")[:k]
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(("file", "image_id", "predicted", "probability", "runner_up"))
    tasks = []
    for rank, i in enumerate(order.tolist()):
        name = f"{rank:05d}.png"
        buf = io.BytesIO()
        Image.fromarray(np.asarray(images[i], dtype=np.uint8)).save(buf, format="PNG")
        store.write_if_absent(f"{prefix}/{name}", buf.getvalue())
        predicted = int(predictions["predicted"][i])
        probability = float(predictions["probability"][i])
        writer.writerow((name, ids[i], predicted, f"{probability:.6f}",
                         int(predictions["runner_up"][i])))
        tasks.append({"data": {"image": store.uri_for(f"{prefix}/{name}"), "image_id": ids[i],
                               "batch": batch},
                      "predictions": [{"model_version": str(version), "score": probability,
                                       "result": [{"from_name": "label", "to_name": "image",
                                                   "type": "choices",
                                                   "value": {"choices": [str(predicted)]}}]}]})
    store.write_if_absent(f"{prefix}/queue.csv", rows.getvalue().encode())
    store.write_if_absent(f"{prefix}/label-studio.json", json.dumps(tasks, indent=1).encode())
    log.info("score: batch %s: the %d least confident image(s) exported for labelling to %s",
             batch, k, store.uri_for(prefix))
    return store.uri_for(prefix)
