"""Message ids: version-4 UUID strings, unique across threads and across fork()."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from klime_mp import events
from klime_mp.message_ids import new_message_id


def test_ids_are_rfc_4122_version_4_in_canonical_form() -> None:
    ids = [new_message_id() for _ in range(2000)]  # several refills of the pool
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower case, dashes at 8-4-4-4-12
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
    assert len(set(ids)) == len(ids)
    # Every random digit really varies: a column copied from the wrong place would not.
    for column in range(36):
        seen = {text[column] for text in ids}
        if column in (8, 13, 18, 23):
            assert seen == {"-"}
        elif column == 14:
            assert seen == {"4"}
        elif column == 19:
            assert seen == set("89ab")
        else:
            assert seen == set("0123456789abcdef"), column


def test_events_carry_pooled_ids() -> None:
    body = events.build_track("A", None, "u", None)
    assert uuid.UUID(body["messageId"]).version == 4


def test_threads_drawing_at_once_never_share_an_id() -> None:
    drawn: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def draw(into: list[str]) -> None:
        start.wait(timeout=10)
        into.extend(new_message_id() for _ in range(3000))

    threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    everything = [text for into in drawn for text in into]
    assert len(everything) == 8 * 3000
    assert len(set(everything)) == len(everything)


@pytest.mark.fork
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_draws_its_parents_ids() -> None:
    # The parent's pool is partly used when it forks: a child that kept drawing from
    # the copy it inherited would send exactly the ids the parent sends next. Nothing
    # here registers an at-fork hook, so this is also what a fork from C (uWSGI) gets.
    new_message_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            text = "\n".join(new_message_id() for _ in range(600))
            with os.fdopen(write_end, "w") as out:
                out.write(text)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_ids = pipe.read().split()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    parent_ids = [new_message_id() for _ in range(600)]
    assert len(child_ids) == 600
    assert not set(child_ids) & set(parent_ids)
    assert len(set(child_ids)) == 600 and len(set(parent_ids)) == 600
