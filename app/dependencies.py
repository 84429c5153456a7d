"""Annotated dependency aliases: what a route may ask for, read from the app the lifespan set up."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.settings import Settings
from app.worker import InferenceWorker


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_worker(request: Request) -> InferenceWorker:
    return request.app.state.worker


SettingsDep = Annotated[Settings, Depends(get_settings)]
WorkerDep = Annotated[InferenceWorker, Depends(get_worker)]
