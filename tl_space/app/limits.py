"""What the queue refuses before any of our code runs, each with a sentence: a session's requests past its share of
the queue, and files that were never uploaded."""

from __future__ import annotations

import logging

import gradio as gr
from gradio.exceptions import InvalidPathError
from pydantic import ValidationError

NOT_UPLOADED = "This file was not uploaded to this app; upload the image again."
MALFORMED = "This request's data is not what this endpoint takes; see the app's API page."
logger = logging.getLogger("tl_space.app")


def refusal(limit: int) -> str:
    return (f"You already have {limit} requests waiting; this Space is busy: wait for them to finish, then try "
            "again.")


def limit_waiting_per_session(demo: gr.Blocks, limit: int) -> None:
    """Refuse a request when its session already has limit requests waiting (queued, not yet running).

    Gradio bounds the whole queue (max_size) but not one session's share of it: without this, one client queueing
    heavy jobs in a loop fills it and every other visitor gets "Queue is full". The check wraps the queue's own
    push, so the refusal is the queue's own (HTTP 503, shown by the page and raised by gradio_client).
    """
    queue = demo._queue
    push = queue.push

    async def push_within_limit(body, request, username):
        session = body.session_hash
        if session is not None:
            waiting = sum(event.session_hash == session for event_queue in
                          queue.event_queue_per_concurrency_id.values() for event in event_queue.queue)
            if waiting >= limit:
                return False, refusal(limit), "queue_full"
        return await push(body, request, username)

    queue.push = push_within_limit


def refuse_files_not_uploaded(demo: gr.Blocks) -> None:
    """A request naming a server file that no visitor uploaded (a forged API call) gets NOT_UPLOADED, one whose data
    does not fit the endpoint's components MALFORMED, each with one warning line in the log; Gradio's own checks
    would print a traceback, with the path, for each such request."""
    preprocess_data = demo.preprocess_data

    async def preprocess_quietly(*args, **kwargs):
        try:
            return await preprocess_data(*args, **kwargs)
        except InvalidPathError as error:
            logger.warning("refused a request naming a file that was not uploaded to this app")
            raise gr.Error(NOT_UPLOADED, print_exception=False) from error
        except ValidationError as error:
            logger.warning("refused a request whose data does not fit the endpoint")
            raise gr.Error(MALFORMED, print_exception=False) from error

    demo.preprocess_data = preprocess_quietly
