"""How long work will take, from what the device measured: the ETA of jobs.

Moving averages rather than a model of the hardware: the first steps of the first job already give
a usable rate, and later measurements follow changes (another GPU tenant, thermal limits).
Guided steps (guidance_scale > 1) run the UNet on a batch of two, so they are kept apart; until one
kind was measured, it is estimated from the other at twice (or half) the cost.
"""

from __future__ import annotations

SMOOTHING = 0.2  # weight of the newest measurement
GUIDED_COST = 2.0  # a guided step runs the UNet on [uncond, cond]


class StepTimes:
    """Seconds per denoising step (by guidance) and per job outside the denoising loop."""

    def __init__(self) -> None:
        self._step_s: dict[bool, float] = {}
        self._overhead_s: float | None = None  # masking, VAE encode/decode, postprocessing

    def observe_step(self, guided: bool, seconds: float) -> None:
        self._step_s[guided] = _blend(self._step_s.get(guided), seconds)

    def observe_overhead(self, seconds: float) -> None:
        self._overhead_s = _blend(self._overhead_s, seconds)

    def step_seconds(self, guided: bool) -> float | None:
        if guided in self._step_s:
            return self._step_s[guided]
        if (other := self._step_s.get(not guided)) is not None:
            return other * GUIDED_COST if guided else other / GUIDED_COST
        return None

    def remaining(self, steps_left: int, guided: bool) -> float | None:
        """Seconds until a job with `steps_left` steps to go is done, or None before any
        measurement."""
        step_s = self.step_seconds(guided)
        if step_s is None:
            return None
        return steps_left * step_s + (self._overhead_s or 0.0)


def _blend(average: float | None, sample: float) -> float:
    return sample if average is None else (1 - SMOOTHING) * average + SMOOTHING * sample
