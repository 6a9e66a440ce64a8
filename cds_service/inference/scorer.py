"""Scoring batches off the event loop, timed.

ORT releases the GIL while it runs, so one worker thread lets the event loop go on parsing and
answering other calls while a batch is scored. One thread, not a pool: each session runs one
intra-op thread, and on a 2-core machine more scoring threads would only contend with the loop.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from cds_service.inference.registry import LoadedModel
from cds_service.lifecycle.follower import ModelHolder
from cds_service.metrics import Metrics


class ModelUnavailable(Exception):
    """No verified model is loaded: the caller shows no score."""


class Scorer:
    def __init__(self, holder: ModelHolder, metrics: Metrics, executor: ThreadPoolExecutor) -> None:
        self.holder = holder
        self._metrics = metrics
        self._executor = executor

    def _timed(self, model: LoadedModel, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        started = time.perf_counter()
        result = model.predict(rows)
        self._metrics.inference_latency.labels(provider=model.provider).observe(
            time.perf_counter() - started
        )
        self._metrics.inference_rows.labels(provider=model.provider).inc(len(rows))
        return result

    def model(self) -> LoadedModel:
        """The model in use, taken once per call so that one answer never mixes two versions."""
        model = self.holder.current
        if model is None:
            raise ModelUnavailable("no model loaded")
        return model

    async def score(
        self, model: LoadedModel, rows: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float64]:
        """Calibrated risks of ``rows`` by ``model``, computed on the scoring thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed, model, rows)
