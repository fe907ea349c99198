"""How many requests one visitor may have waiting in the queue: past it, a sentence instead of a place in line."""

from __future__ import annotations

import gradio as gr


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
