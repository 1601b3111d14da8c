"""What the app holds for its routes (settings, sessions, the Celery app), built once by create_app."""

from dataclasses import dataclass, field

from celery import Celery
from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings


@dataclass
class Resources:
    """What the app holds for its routes, built once by create_app."""

    settings: Settings
    sessions: sessionmaker[Session]
    celery: Celery
    # What is wrong with the settings, found at start: /readyz is not ready while any is listed.
    problems: list[str] = field(default_factory=list)


def resources() -> Resources:
    return current_app.extensions["grocery"]
