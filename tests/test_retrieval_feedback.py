"""Retrieval feedback through the real reaction paths: a console `+1`, a Slack reaction (signed
Events API request into the Lambda handler), a Discord 👍 button (signed interaction). A 👍 lifts
the cited passage to the top for a paraphrase, a 👎 demotes it, a retraction restores the ranking,
and a vote in one knowledge space never moves another space's results."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.report.collect import collect
from core.settings import Settings, get_settings
from core.store import open_store
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]
HANDBOOK = ("휴가-규정.md", "재택근무.md", "경비-처리.md")
# The answer to QUESTION cites the 경조사 passage (휴가-규정.md#3); the paraphrase, unaided, ranks the
# leave-request passage (#2) a hair above it. Feedback breaks near-ties; it never overrides a clear margin.
QUESTION, PARAPHRASE = "경조사 휴가 며칠?", "경조사 휴가는?"
DISLIKED, DISLIKED_PARAPHRASE = "휴가 신청은 어떻게 하나요?", "휴가 신청은 어떻게 해요?"

pytestmark = pytest.mark.timeout(240)


def build_kb(root: Path, **overrides: Any) -> Path:
    """The handbook ingested into two spaces, `hr` and `eng` (the same text in each)."""
    from rag.ingest import ingest_paths

    docs = root / "docs"
    docs.mkdir(parents=True)
    for name in HANDBOOK:
        shutil.copy(ROOT / "examples" / "handbook" / name, docs / name)
    settings = make_settings(root, **overrides)
    for space in ("hr", "eng"):
        assert ingest_paths([docs], space=space, settings=settings, progress=False).failed == 0
    return root / "qdrant"


@pytest.fixture
def kb(tmp_path: Path) -> Path:
    """A private base per test, since votes change it (Qdrant Edge, the embedded default)."""
    return build_kb(tmp_path / "kb")


@pytest.fixture
def feedback_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRIEVAL_FEEDBACK", "true")


def ranking(settings: Settings, question: str, space: str) -> list[str]:
    """The passages a fresh process would retrieve now (after bringing the feedback up to date)."""
    from rag.agent import Agent

    with Agent.from_settings(settings) as agent:
        agent.retriever.sync_feedback(agent.store)
        return [p.chunk_id.rsplit("/", 1)[-1] for p in agent.retriever.search(question, spaces=[space], limit=5)]


def cited_by(answer: Any) -> str:
    return str(answer.citations[0].chunk_id).rsplit("/", 1)[-1]


def console_vote(agent: Any, settings: Settings, question: str, reaction: str, *, user: str = "local") -> str:
    """Ask in the console (channel mapped to hr) as `user`, then type the reaction; returns the
    passage the answer cited."""
    from bots.console import ConsoleChat

    chat = ConsoleChat(agent=agent, settings=settings, store=agent.store, spaces=["hr"], user=user, out=io.StringIO())
    cited = cited_by(chat.ask(question))
    chat.handle(reaction)
    return cited


# --- console -------------------------------------------------------------------------------------


def _console_votes_move_the_cited_passages(settings: Settings) -> None:
    from rag.agent import Agent

    before, disliked_before = ranking(settings, PARAPHRASE, "hr"), ranking(settings, DISLIKED_PARAPHRASE, "hr")
    with Agent.from_settings(settings) as agent:
        liked = console_vote(agent, settings, QUESTION, "+1")
        disliked = console_vote(agent, settings, DISLIKED, "-1")
    assert before[0] != liked  # unaided, the paraphrase ranks another passage first
    assert disliked_before[0] == disliked
    assert ranking(settings, PARAPHRASE, "hr")[0] == liked
    assert ranking(settings, DISLIKED_PARAPHRASE, "hr")[0] != disliked
    assert ranking(settings, PARAPHRASE, "eng") == before  # the votes were cast in hr
    # the answer to the paraphrase cites the lifted passage: the record says so, and the report counts it
    with Agent.from_settings(settings) as agent:
        assert console_vote(agent, settings, PARAPHRASE, "+1", user="second") == liked
    effect = collect(open_store(settings), since=datetime.now(UTC) - timedelta(hours=1),
                     adapter_name=settings.adapter_name).feedback_effect
    assert (effect.lifted_answers, effect.lifted_up, effect.lifted_down) == (1, 1, 0)
    assert (effect.other_up, effect.other_down) == (1, 1)  # the two votes that did the lifting


def test_console_votes_move_the_cited_passage_for_a_paraphrase(tmp_path: Path, kb: Path, feedback_on: None) -> None:
    _console_votes_move_the_cited_passages(make_settings(tmp_path, qdrant_path=kb))


def test_the_same_through_qdrant_client(tmp_path: Path, feedback_on: None) -> None:
    """qdrant-client's code path (what a Qdrant server gets), in its local mode."""
    kb = build_kb(tmp_path / "kb", vector_backend="local")
    _console_votes_move_the_cited_passages(make_settings(tmp_path, qdrant_path=kb, vector_backend="local"))


def test_feedback_is_off_when_disabled(tmp_path: Path, kb: Path, feedback_on: None) -> None:
    from rag.agent import Agent

    settings = make_settings(tmp_path, qdrant_path=kb)
    before = ranking(settings, PARAPHRASE, "hr")
    with Agent.from_settings(settings) as agent:
        console_vote(agent, settings, QUESTION, "+1")
    assert ranking(settings.model_copy(update={"retrieval_feedback": False}), PARAPHRASE, "hr") == before


# --- Slack ---------------------------------------------------------------------------------------


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kb: Path, feedback_on: None) -> Iterator[Any]:
    from tests.support_slack import rig_with_fake

    # the rig reads QDRANT_PATH/.. as the base; the handler's own retriever holds its lock
    yield from rig_with_fake(monkeypatch, tmp_path, kb.parent, RETRIEVAL_FEEDBACK="true")


def _slack_ranking(question: str, space: str) -> list[str]:
    """What the Slack function's own retriever ranks now (it holds the embedded base's lock)."""
    from bots.slack.app import services_of
    from handlers.slack_events import request_handler

    agent = services_of(request_handler().app).ask.__self__  # type: ignore[attr-defined]  # the bound Agent.ask
    agent.retriever.sync_feedback(agent.store)
    return [p.chunk_id.rsplit("/", 1)[-1] for p in agent.retriever.search(question, spaces=[space], limit=5)]


def test_a_slack_reaction_lifts_the_passage_and_its_removal_restores_the_ranking(slack: Any) -> None:
    from tests.support_slack import HR, answers_in

    rig = slack
    before, other_space = _slack_ranking(PARAPHRASE, "hr"), _slack_ranking(PARAPHRASE, "eng")
    question, _ = rig.mention(HR, QUESTION)
    answer_ts = answers_in(rig, HR, question["ts"])[0]["ts"]
    record = rig.answer_record(HR, answer_ts)
    liked = next(c.chunk_id for c in record.contexts if c.cited).rsplit("/", 1)[-1]
    assert before[0] != liked

    rig.reaction("reaction_added", user="U0000009", channel=HR, ts=answer_ts, event_ts="1800000000.000100")
    assert _slack_ranking(PARAPHRASE, "hr")[0] == liked
    assert _slack_ranking(PARAPHRASE, "eng") == other_space  # the ENG channel's space: untouched
    rig.reaction("reaction_removed", user="U0000009", channel=HR, ts=answer_ts, event_ts="1800000000.000200")
    assert _slack_ranking(PARAPHRASE, "hr") == before


# --- Discord -------------------------------------------------------------------------------------


def test_a_discord_thumbs_down_button_demotes_the_passage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kb: Path, feedback_on: None
) -> None:
    from nacl.signing import SigningKey

    from bots.discord.runtime import close_runtime
    from core.contracts import make_answer_id
    from core.records import load_answer
    from core.store import open_store
    from tests.support_discord import CHANNEL_ID, FakeDiscord, apply_settings_env, button_interaction
    from tests.test_discord import _discord_fields, ask_and_answer, send

    key, fake = SigningKey.generate(), FakeDiscord().start()
    try:
        settings = apply_settings_env(monkeypatch, make_settings(
            tmp_path, **_discord_fields(key, fake, kb), channel_spaces={CHANNEL_ID: ["hr"]}, retrieval_feedback=True,
        ))
        before = ranking(settings, DISLIKED_PARAPHRASE, "hr")
        message = ask_and_answer(key, fake, settings, DISLIKED)
        record = load_answer(open_store(settings), make_answer_id("discord", CHANNEL_ID, message["id"]))
        assert record is not None
        disliked = next(c.chunk_id for c in record.contexts if c.cited).rsplit("/", 1)[-1]
        assert before[0] == disliked  # the paraphrase, unaided, ranks the disliked passage first
        _, down = (b["custom_id"] for b in message["components"][0]["components"])
        assert send(key, fake, button_interaction(down, message))[0] == 200
        close_runtime()  # the worker's retriever holds the embedded base; a fresh process reads it
        assert ranking(settings, DISLIKED_PARAPHRASE, "hr")[0] != disliked
    finally:
        close_runtime()
        get_settings.cache_clear()
        fake.stop()


def test_one_person_is_one_vote_per_passage_votes_fade_and_the_sum_is_capped(
    tmp_path: Path, kb: Path, feedback_on: None
) -> None:
    import time

    from rag.agent import Agent
    from rag.feedback_index import MAX_BOOST

    settings = make_settings(tmp_path, qdrant_path=kb)
    with Agent.from_settings(settings) as agent:
        def vote(user: str, times: int) -> None:
            for _ in range(times):
                console_vote(agent, settings, QUESTION, "+1", user=user)

        def weight(now: float | None = None) -> float:
            agent.retriever.sync_feedback(agent.store)
            assert agent.retriever.feedback is not None
            boosts = agent.retriever.feedback.boosts(agent.retriever.sparse.query(QUESTION), None, ["hr"], now=now)
            (boost,) = boosts.values()  # the one passage the answers cite
            return boost.weight

        vote("pat", 3)  # the same person, three answers to the same question
        assert weight() == pytest.approx(1.0, abs=1e-3)
        assert weight(now=time.time() + settings.feedback_half_life_days * 86400) == pytest.approx(0.5, abs=1e-3)
        vote("sam", 1)
        vote("kim", 1)
        assert weight() == MAX_BOOST  # three people agree; a passage carries at most MAX_BOOST


def test_an_admin_sees_the_feedback_in_status_lists_it_and_clears_it(
    tmp_path: Path, kb: Path, feedback_on: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from handlers.cli import main
    from rag.agent import Agent

    settings = make_settings(tmp_path, qdrant_path=kb)
    before = ranking(settings, PARAPHRASE, "hr")
    with Agent.from_settings(settings) as agent:
        console_vote(agent, settings, QUESTION, "+1")
        agent.retriever.sync_feedback(agent.store)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("QDRANT_PATH", str(kb))
    get_settings.cache_clear()
    try:
        assert main(["status"]) == 0
        assert "1 answer(s) re-rank 1 passage(s) (👍 1 👎 0)" in capsys.readouterr().out
        assert main(["feedback", "index", "list", "--json"]) == 0
        (line,) = capsys.readouterr().out.splitlines()
        entry = json.loads(line)
        assert (entry["question"], entry["spaces"], entry["positive"]) == (QUESTION, ["hr"], 1)
        assert main(["feedback", "index", "clear"]) == 2  # not without --yes
        assert main(["feedback", "index", "clear", "--space", "eng", "--yes"]) == 0  # another space: nothing
        assert main(["feedback", "index", "clear", "--yes"]) == 0
        assert "cleared retrieval feedback of 1 answer(s)" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()
    assert ranking(settings, PARAPHRASE, "hr") == before


def test_wrong_votes_cannot_bury_a_passage_that_wins_by_a_clear_margin(
    tmp_path: Path, kb: Path, feedback_on: None
) -> None:
    """Three people 👎 the right answer: the capped boost (MAX_BOOST × FEEDBACK_WEIGHT of the score
    range) cannot push it below a passage the retrieval ranked far behind."""
    from rag.agent import Agent

    question = "휴가는 어떻게 신청하나요?"  # the leave-request passage leads by half the score range
    settings = make_settings(tmp_path, qdrant_path=kb)
    before = ranking(settings, question, "hr")
    with Agent.from_settings(settings) as agent:
        for user in ("pat", "sam", "kim"):
            assert console_vote(agent, settings, question, "-1", user=user) == before[0]
    after = ranking(settings, question, "hr")
    assert after[0] == before[0]


def test_feedback_on_a_passage_whose_text_changed_is_retired_on_reingest(
    tmp_path: Path, kb: Path, feedback_on: None
) -> None:
    from rag.agent import Agent
    from rag.ingest import ingest_paths

    settings = make_settings(tmp_path, qdrant_path=kb)
    with Agent.from_settings(settings) as agent:
        liked = console_vote(agent, settings, QUESTION, "+1")
    assert ranking(settings, PARAPHRASE, "hr")[0] == liked
    doc = kb.parent / "docs" / "휴가-규정.md"
    doc.write_text(doc.read_text(encoding="utf-8").replace("경조 휴가가 주어집니다", "경조 휴가(유급)가 주어집니다"), encoding="utf-8")
    assert ingest_paths([kb.parent / "docs"], space="hr", settings=settings, progress=False).updated == 1
    unaided = ranking(settings.model_copy(update={"retrieval_feedback": False}), PARAPHRASE, "hr")
    assert unaided[0] != liked  # the vote would still lift it, were it applied
    assert ranking(settings, PARAPHRASE, "hr") == unaided  # the votes were on text that is gone
