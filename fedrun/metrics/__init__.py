"""Metric outputs: TensorBoard event files written without TensorFlow."""

from __future__ import annotations

from fedrun.metrics.tensorboard import TensorBoardWriter

__all__ = ["TensorBoardWriter"]
