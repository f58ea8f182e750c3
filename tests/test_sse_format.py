"""The SSE wire format, to the byte."""

from livedoc import sse


def test_message_with_event_and_id():
    assert sse.message({"seq": 3, "state": "running"}, event="progress", id=3) == (
        'event: progress\nid: 3\ndata: {"seq":3,"state":"running"}\n\n'
    )


def test_message_text_data_is_sent_as_is_and_split_per_line():
    assert sse.message("a\nb") == "data: a\ndata: b\n\n"


def test_comment_and_retry():
    assert sse.comment() == ": ping\n\n"
    assert sse.retry(3000) == "retry: 3000\n\n"


def test_event_names_follow_state():
    assert sse.event_name({"state": "queued"}) == "progress"
    assert sse.event_name({"state": "running"}) == "progress"
    assert sse.event_name({"state": "complete"}) == "complete"
    assert sse.event_name({"state": "failed"}) == "error"


def test_last_event_id_parsing():
    assert sse.parse_last_event_id("17") == 17
    for bad in (None, "", "-1", "abc", "1e3", "١٢", "9" * 21, " 5"):
        assert sse.parse_last_event_id(bad) == 0
