"""`echorag report` and the App Home from a store filled the way users fill it: Slack questions and
reactions through the signed Lambda handler, a console chat with a 👎 and its reason, and a real
training job on the tiny model; then the page in a real headless Chromium.

One store for the module (ingest, two platforms and a LoRA run cost ~20 s); each test reads it.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bots.console import ConsoleChat
from core import records
from core.report.collect import ReportData, collect
from core.report.page import report_html
from core.settings import Settings
from core.store import open_store
from handlers.cli.report import knowledge_catalogue, parse_since
from rag.agent import Agent
from tests.conftest import make_settings
from tests.support_slack import ADMIN, HR, FakeSlack, Rig, block_action, make_rig, rig_with_fake
from tests.support_training import QA, FakeServer, queue_job, seed_feedback, training_values
from training.dataset import build_examples
from training.worker import Worker

HANDBOOK = """# 휴가 규정

## 연차

연차 휴가는 1년에 15일이 주어집니다.

## 신청

연차 휴가 신청은 HR 포털에서 사용일 3일 전까지 합니다.

## 경조사

결혼하면 경조 휴가 5일을 받습니다.
"""
ONCALL = """# 온콜 가이드

온콜 엔지니어는 주간 단위로 교대합니다.
"""
PARKING = ("주차 등록은 어떻게 하나요?", "주차 요금은 얼마인가요?")  # nothing in the documents: one gap


@dataclass
class Filled:
    settings: Settings
    data_dir: Path
    kb: Path
    slack_answer_ts: str


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Iterator[Filled]:
    from rag.ingest import ingest_paths

    kb = tmp_path_factory.mktemp("kb")
    for space, name, text in (("hr", "휴가.md", HANDBOOK), ("eng", "oncall.md", ONCALL)):
        (kb / space).mkdir()
        (kb / space / name).write_text(text, encoding="utf-8")
        ingest_paths([kb / space], space=space, settings=Settings(_env_file=None, data_dir=kb), progress=False)
    data_dir = tmp_path_factory.mktemp("data")
    # first a training job on the tiny model, over answers rated through the reaction path (the
    # questions below come after it, so the job trains on what test_training shows it learns)
    servers = {kind: FakeServer(kind) for kind in ("slack", "discord", "vllm")}
    try:
        trained = make_settings(data_dir, qdrant_path=kb / "qdrant", **training_values(tiny_base, servers))
        seed_feedback(trained)
        queue_job(trained)
        [outcome] = Worker(trained, show_progress=False).run(once=True, wait_s=0)
        assert outcome.outcome == "published", outcome.detail
    finally:
        for server in servers.values():
            server.close()
    fake = FakeSlack().start()
    with pytest.MonkeyPatch.context() as mp:
        for rig in make_rig(mp, data_dir, kb, fake):
            question, _ = rig.mention(HR, "연차 휴가는 1년에 며칠인가요?")
            [answer] = [m for m in fake.thread(HR, question["ts"]) if m.get("bot_id")]
            rig.reaction("reaction_added", user="UA", channel=HR, ts=answer["ts"], emoji="+1")
            rig.reaction("reaction_added", user="UB", channel=HR, ts=answer["ts"], emoji="-1")
            rig.reaction("reaction_removed", user="UB", channel=HR, ts=answer["ts"], emoji="-1")  # withdrawn
            rig.mention(HR, PARKING[0])
    fake.stop()
    settings = make_settings(data_dir, qdrant_path=kb / "qdrant", llm_backend="extractive")
    store = open_store(settings)
    with Agent.from_settings(settings, store=store) as agent:
        chat = ConsoleChat(agent=agent, settings=settings, store=store, user="kim", out=io.StringIO())
        for line in (PARKING[1], "/new", "연차 신청은 어디서 하나요?", "👎", "/why outdated 포털 주소가 바뀌었어요"):
            chat.handle(line)
    yield Filled(settings=settings, data_dir=data_dir, kb=kb, slack_answer_ts=answer["ts"])


def _collect(filled: Filled) -> ReportData:
    return collect(open_store(filled.settings), since=datetime.now(UTC) - timedelta(days=1),
                   adapter_name=filled.settings.adapter_name, catalogue=knowledge_catalogue(filled.settings))


def test_report_numbers_match_the_records(filled: Filled) -> None:
    store = open_store(filled.settings)
    answers = list(records.iter_answers(store))
    rated = records.labelled_answers(store)
    data = _collect(filled)

    assert data.totals.questions == len(answers) == 2 + 2 + len(QA) + 1  # Slack, console, the training seed
    assert data.totals.abstained == sum(a.abstained for a in answers) == 2  # the parking questions
    assert data.totals.up == sum(r.positive for r in rated) and data.totals.down == sum(r.negative for r in rated)
    assert data.by_platform["console"].questions == 2 and data.by_platform["console"].down == 1
    slack = data.by_platform["slack"]
    assert slack.questions == 2 + len(QA) + 1 and (slack.up, slack.down) == (1 + len(QA), 1)  # UB's 👎 withdrawn
    assert sum(c.questions for c in data.by_day.values()) == data.totals.questions
    assert sum(c.up for c in data.by_day.values()) == data.totals.up
    # hr: both Slack questions (the channel searches hr; the abstention cites nothing) and the console
    # answer citing the handbook; the console abstention searched every space
    assert data.by_space["hr"].questions == 3 and data.by_space["(all)"].questions >= 1
    assert data.skipped == 0

    # documents: the cited handbook sections, and the on-call guide and an uncited section never cited
    assert data.cited_documents[0].title == "휴가 규정" and data.cited_documents[0].answers == 2
    assert {c.section for c in data.cited_sections} >= {"§ 연차", "§ 신청"}
    assert data.never_cited is not None
    never = {(c.title, c.section) for c in data.never_cited}
    assert ("온콜 가이드", "") in never and ("휴가 규정", "§ 경조사") in never
    assert not any(c.section == "§ 연차" for c in data.never_cited)

    # adapters: v1 from the job, live, with the gate's before → after and its loss curve
    [adapter] = data.adapters
    assert adapter.label == "v1" and adapter.live and adapter.published
    assert adapter.after["eval_nll"] < adapter.before["eval_nll"] and len(adapter.loss_curve) > 1


def test_gaps_group_questions_across_platforms_with_the_reasons_people_gave(filled: Filled) -> None:
    data = _collect(filled)
    parking = next(g for g in data.gaps if "주차" in g.topic)
    assert sorted(q.question for q in parking.questions) == sorted(PARKING)  # one from Slack, one from the console
    assert parking.count == parking.abstained == 2
    [outdated] = [g for g in data.gaps if g.reasons]
    assert outdated.reasons == {"outdated": 1} and outdated.down == 1
    assert outdated.examples[0].notes == ("포털 주소가 바뀌었어요",)
    assert data.reasons == {"outdated": 1}


def test_the_reason_travels_with_the_vote_into_the_training_snapshot(filled: Filled) -> None:
    rows = records.labelled_answers(open_store(filled.settings))
    [console] = [r for r in rows if r.answer.platform == "console"]
    assert [(v.label, v.reason, v.reason_text) for v in console.votes] == [(-1, "outdated", "포털 주소가 바뀌었어요")]
    examples, _, _ = build_examples(rows)
    [bad] = [ex for ex in examples if console.answer.answer_id in ex.answer_ids]
    assert bad.label == -1 and bad.reasons == ("outdated",)


class _Text(HTMLParser):
    """Element text by id, and every <img> source (the page has no script to run)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.images: list[str] = []
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
            return
        self._open.append(values.get("id"))

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element in self._open:
            if element:
                self.by_id[element] = self.by_id.get(element, "") + data


def test_the_page_shows_those_numbers_inline_and_self_contained(filled: Filled, tmp_path: Path) -> None:
    data = _collect(filled)
    html = report_html(data, command="echorag report", live="v1")
    page = _Text()
    page.feed(html)
    assert page.by_id["n-questions"].strip() == str(data.totals.questions)
    assert page.by_id["n-abstained"].strip() == "2" and page.by_id["live-adapter"].strip() == "v1"
    assert page.by_id["n-up"].strip() == str(data.totals.up)
    assert "주차" in page.by_id["gap-table"] and "outdated 1" in page.by_id["gap-table"]
    assert "§ 경조사" in page.by_id["never-cited"]
    assert len(page.images) == 5 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert "could not be drawn" not in html  # every chart label had a glyph
    assert not re.search(r"""(src|href)=["']?https?:""", html) and "@font-face" in html  # nothing fetched


def test_echorag_report_cli_writes_the_file_and_rejects_a_bad_window(filled: Filled, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from core.settings import get_settings
    from handlers.cli import main

    monkeypatch.setenv("DATA_DIR", str(filled.data_dir))
    monkeypatch.setenv("QDRANT_PATH", str(filled.kb / "qdrant"))
    get_settings.cache_clear()
    try:
        out = tmp_path / "out" / "report.html"
        assert main(["report", "--since", "2d", "--out", str(out)]) == 0
        assert out.is_file() and "EchoRAG report" in out.read_text(encoding="utf-8")
        assert "wrote" in capsys.readouterr().out
        assert main(["report", "--since", "yesterday"]) == 2
        assert capsys.readouterr().err.strip() == (
            "error: --since must look like 30d, 12h, 2w or 2026-11-01, not 'yesterday'")
    finally:
        get_settings.cache_clear()
    now = datetime(2026, 12, 4, 12, tzinfo=UTC)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)


# --- in a real browser ------------------------------------------------------------------------


def _chromium() -> tuple[str, str] | None:
    browser, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    found = _chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's chromium and chromium-driver (.ci/run installs them)")
        pytest.skip("chromium + chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900", f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_report_renders_in_chromium_without_errors_or_missing_korean_glyphs(
    filled: Filled, browser: Any, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    page.write_text(report_html(_collect(filled), command="echorag report", live="v1"), encoding="utf-8")
    browser.get(page.as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    assert browser.execute_script(
        "return [...document.images].every(i => i.complete && i.naturalWidth > 0)") is True
    assert browser.execute_script("return document.fonts.check('16px \"EchoRAG Nanum\"', '주차 휴가')") is True

    # Every glyph of every Korean text is drawn from the embedded font: no fallback, so no tofu.
    korean = browser.execute_script("""
        let n = 0;
        for (const el of document.body.querySelectorAll('*')) {
            const own = [...el.childNodes].filter(c => c.nodeType === 3).map(c => c.data).join('');
            if (/[가-힣]/.test(own)) { el.setAttribute('data-korean', ''); n++; }
        }
        return n;""")
    browser.execute_cdp_cmd("DOM.enable", {})
    browser.execute_cdp_cmd("CSS.enable", {})
    root = browser.execute_cdp_cmd("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    nodes = browser.execute_cdp_cmd("DOM.querySelectorAll", {"nodeId": root, "selector": "[data-korean]"})["nodeIds"]
    assert len(nodes) == korean
    for node in nodes:
        fonts = browser.execute_cdp_cmd("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
        text = browser.execute_cdp_cmd("DOM.getOuterHTML", {"nodeId": node})["outerHTML"]
        assert fonts and all(f["isCustomFont"] for f in fonts), (text[:80], fonts)
    assert korean >= 10
    browser.set_window_size(1200, min(4000, browser.execute_script("return document.body.scrollHeight") + 40))
    browser.save_screenshot(str(tmp_path / "report.png"))  # the whole page, to look at
    assert (tmp_path / "report.png").stat().st_size > 10_000


# --- the Slack App Home -----------------------------------------------------------------------


@pytest.fixture
def home_rig(filled: Filled, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    yield from rig_with_fake(monkeypatch, filled.data_dir, filled.kb)


def _home_text(view: dict[str, Any]) -> str:
    return json.dumps(view["blocks"], ensure_ascii=False)


def test_admins_see_the_numbers_and_gaps_and_queue_retraining_from_the_app_home(home_rig: Rig, filled: Filled) -> None:
    from core import jobs

    # a new vote since the last job, so the button has something to train on
    home_rig.reaction("reaction_added", user="UC", channel=HR, ts=filled.slack_answer_ts, emoji="+1")
    opened = {"type": "app_home_opened", "user": ADMIN, "channel": "D0ADMIN", "tab": "home",
              "event_ts": f"{datetime.now(UTC).timestamp():.6f}"}
    assert home_rig.deliver(opened)["statusCode"] == 200
    view = home_rig.fake.homes[ADMIN]
    text = _home_text(view)
    data = _collect_for(home_rig)
    assert f"*Questions*\\n{data.totals.questions}" in text and f"*Abstained*\\n{data.totals.abstained}" in text
    assert "*Live adapter*\\nv1" in text and "주차" in text
    [actions] = [b for b in view["blocks"] if b["type"] == "actions"]
    assert actions["elements"][0]["action_id"] == "echorag_home_retrain"

    body = block_action("echorag_home_retrain", user=ADMIN)
    assert home_rig.send(body, content_type="application/x-www-form-urlencoded")["statusCode"] == 200
    assert "Retraining queued" in _home_text(home_rig.fake.homes[ADMIN])
    assert jobs.active_job_id(home_rig.store) is not None


def test_everyone_else_gets_how_to_ask_and_cannot_retrain_by_forging_the_button(home_rig: Rig) -> None:
    from core import jobs

    opened = {"type": "app_home_opened", "user": "UPLAIN1", "channel": "D0PLAIN", "tab": "home",
              "event_ts": f"{datetime.now(UTC).timestamp():.6f}"}
    home_rig.deliver(opened)
    text = _home_text(home_rig.fake.homes["UPLAIN1"])
    assert "mention me" in text and "Questions" not in text and "echorag_home_retrain" not in text
    before = jobs.active_job_id(home_rig.store)
    home_rig.send(block_action("echorag_home_retrain", user="UPLAIN1"),
                  content_type="application/x-www-form-urlencoded")
    assert "Only the admins" in _home_text(home_rig.fake.homes["UPLAIN1"])
    assert jobs.active_job_id(home_rig.store) == before


def _collect_for(rig: Rig) -> ReportData:
    return collect(rig.store, since=datetime.now(UTC) - timedelta(days=7), adapter_name=rig.settings.adapter_name)
