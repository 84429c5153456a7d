"""Annotated dependency aliases: what a route may ask for, read from the app the lifespan set up."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.cache.results import ResultCache
from app.images.store import ImageStore
from app.inference.contract import Worker
from app.jobs.events import StreamSlots
from app.jobs.runner import JobRunner
from app.media.intake import Intake
from app.settings import Settings


# Coroutines, not plain functions: FastAPI runs a plain dependency in the thread pool, and /health
# must answer while every pool thread decodes an upload.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_worker(request: Request) -> Worker:
    return request.app.state.worker


async def get_cache(request: Request) -> ResultCache | None:
    """The result cache, or None when `--cache-mb 0` turned it off."""
    return request.app.state.cache


async def get_jobs(request: Request) -> JobRunner:
    return request.app.state.jobs


async def get_intake(request: Request) -> Intake:
    return request.app.state.intake


async def get_streams(request: Request) -> StreamSlots:
    """Open job event streams per client (--max-streams-per-client)."""
    return request.app.state.streams


async def get_images(request: Request) -> ImageStore:
    """The stored images (app/images): their routes, and both try-on doors' `*_image_id` fields."""
    return request.app.state.images


SettingsDep = Annotated[Settings, Depends(get_settings)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
CacheDep = Annotated[ResultCache | None, Depends(get_cache)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
IntakeDep = Annotated[Intake, Depends(get_intake)]
StreamsDep = Annotated[StreamSlots, Depends(get_streams)]
ImagesDep = Annotated[ImageStore, Depends(get_images)]
