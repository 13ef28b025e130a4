"""``--log-format json``: one JSON object per line, with the request id always and the workflow
id where there is one; the text format unchanged."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from freezeframe.common import logs
from freezeframe.common.context import request_id_var, workflow_id_var


@pytest.fixture
def root():
    """The root logger's handlers and level put back after each test (setup replaces them)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield root
    root.handlers[:], level = saved[0], saved[1]
    root.setLevel(level)
    logging.captureWarnings(False)      # (the json format routes warnings into the log)


def capture(root, fmt: str) -> io.StringIO:
    logs.setup("debug", fmt)
    out = io.StringIO()
    root.handlers[0].setStream(out)
    return out


def test_json_lines_carry_request_and_workflow_ids(root):
    out = capture(root, "json")
    log = logging.getLogger("freezeframe.test")
    log.info("outside a request")
    token = request_id_var.set("req-1234")
    try:
        log.warning("two\nlines and a %s", "quote \"")
        wtoken = workflow_id_var.set("wf-5678")
        try:
            log.error("in a workflow")
        finally:
            workflow_id_var.reset(wtoken)
    finally:
        request_id_var.reset(token)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3                      # a newline in a message stays inside its line
    docs = [json.loads(line) for line in lines]
    assert docs[0]["request_id"] == "-" and "workflow_id" not in docs[0]
    assert docs[1] == {"time": docs[1]["time"], "level": "WARNING", "logger": "freezeframe.test",
                       "message": 'two\nlines and a quote "', "request_id": "req-1234"}
    assert docs[2]["workflow_id"] == "wf-5678" and docs[2]["request_id"] == "req-1234"
    assert docs[2]["level"] == "ERROR"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", d["time"]) for d in docs)


def test_json_exception_is_kept_in_its_line(root):
    out = capture(root, "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("freezeframe.test").exception("failed")
    (doc,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert doc["message"] == "failed"
    assert "Traceback" in doc["exception"] and "ValueError: boom" in doc["exception"]


def test_text_format_is_unchanged(root):
    out = capture(root, "text")
    token = request_id_var.set("req-1")
    wtoken = workflow_id_var.set("wf-1")
    try:
        logging.getLogger("freezeframe.test").info("hello")
    finally:
        workflow_id_var.reset(wtoken)
        request_id_var.reset(token)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO freezeframe.test \[req-1\] hello\n",
                        out.getvalue())


def test_unknown_format_is_refused(root):
    with pytest.raises(ValueError, match="text, json"):
        logs.setup("info", "xml")


def test_settings_check_the_format():
    from freezeframe import settings

    assert settings.load(environ={}, flags={"server.log_format": "json"}).server.log_format == "json"
    with pytest.raises(settings.SettingsError, match="server.log_format"):
        settings.load(environ={}, flags={"server.log_format": "yaml"})
