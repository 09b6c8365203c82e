"""Job helpers the queues do not need: persist a job and supersede at once.

The queues supersede in the background (cancellation.Superseder); tests that check
what a job obsoletes want it done when the call returns.
"""

from __future__ import annotations

from runner.events.comment_parser import parse_comment
from runner.events.model import CommentEvent, RepoRef
from runner.jobs.cancellation import Superseded, supersede
from runner.jobs.model import WorkEvent
from runner.jobs.queue import enqueue_event
from runner.store.deliveries import DeliveryRef
from runner.store.store import Store


def submit_event(
    store: Store, event: WorkEvent, delivery: DeliveryRef | None = None
) -> tuple[int, Superseded]:
    """`enqueue_event`, then supersede what the job obsoletes, synchronously."""
    job_id = enqueue_event(store, event, delivery)
    return job_id, supersede(store, event, job_id)


def comment_event(repo: RepoRef, number: int, body: str, author: str = "bob") -> CommentEvent:
    """A PR comment as the webhook hands it on: its body parsed once, here."""
    return CommentEvent(
        repo=repo,
        pr_number=number,
        comment_id=1,
        body=body,
        author=author,
        author_is_bot=False,
        command=parse_comment(body),
    )
