"""Annotated dependency aliases: what a route may ask for, read from the app the lifespan set up."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.intake import Intake
from app.settings import Settings
from app.worker import InferenceWorker


# Coroutines, not plain functions: FastAPI runs a plain dependency in the thread pool, and /health
# must answer while every pool thread decodes an upload.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_worker(request: Request) -> InferenceWorker:
    return request.app.state.worker


async def get_intake(request: Request) -> Intake:
    return request.app.state.intake


SettingsDep = Annotated[Settings, Depends(get_settings)]
WorkerDep = Annotated[InferenceWorker, Depends(get_worker)]
IntakeDep = Annotated[Intake, Depends(get_intake)]
