"""Sources as links: a document's URL (markdown front matter, HTML canonical link, corpus row, S3
metadata in test_ingest_s3.py) goes through ingestion, retrieval and the real Agent into
`Citation.url` and the answer record, and the Slack and Discord renderers link it, safely.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from core.contracts import AnswerRecord
from core.records import load_answer
from core.settings import Settings
from core.store import open_store
from rag.agent import Agent
from rag.loaders import Document, load_file
from rag.types import AgentAnswer, AnswerRef, Citation
from tests.conftest import make_settings

WIKI_URL = "https://wiki.example.com/security?page=laptop&v=2"
RUNBOOK_URL = "https://docs.example.com/runbook"

LAPTOP_MD = f"""---
title: "보안 | 분실 <대응> [v2]"
url: {WIKI_URL}
tags:
  - security
---
# 노트북 분실

노트북을 분실하면 즉시 보안팀 내선 4000번으로 연락하고 분실 신고서를 제출합니다.
"""
RUNBOOK_HTML = f"""<!doctype html><html><head><title>Deploy runbook</title>
<link rel="canonical" href="{RUNBOOK_URL}"><meta property="og:url" content="https://other.example.com/">
</head><body><h1>Rollback</h1><p>To roll back the web service run the rollback job; the rollback
takes three minutes.</p></body></html>"""
PARKING_MD = "# 주차 지원\n\n주차 지원금은 매월 10만 원이며 총무팀에 영수증을 내면 받습니다.\n"


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Agent]]:
    from rag.ingest import ingest_paths
    from rag.retrieval import Retriever

    folder = tmp_path_factory.mktemp("linked") / "kb"
    folder.mkdir()
    (folder / "laptop.md").write_text(LAPTOP_MD, encoding="utf-8")
    (folder / "runbook.html").write_text(RUNBOOK_HTML, encoding="utf-8")
    (folder / "parking.md").write_text(PARKING_MD, encoding="utf-8")
    settings = make_settings(tmp_path_factory.mktemp("data"), llm_backend="extractive")
    summary = ingest_paths([folder], space="default", settings=settings, progress=False)
    assert (summary.added, summary.failed) == (3, 0), summary.failures
    retriever = Retriever.from_settings(settings)
    yield settings, Agent.from_settings(settings, retriever=retriever)
    retriever.close()


def _ask(agent: Agent, question: str, **kw: Any) -> AgentAnswer:
    answer = agent.ask(question, **kw)
    assert not answer.abstained and answer.citations, answer.text
    return answer


def test_front_matter_url_reaches_the_citation_and_the_answer_record(kb: tuple[Settings, Agent]) -> None:
    settings, agent = kb
    ref = AnswerRef(platform="slack", channel="C1", message_id="1700000000.000200")
    answer = _ask(agent, "노트북을 분실하면 어디에 연락하나요?", ref=ref)
    cited = answer.citations[0]
    assert (cited.title, cited.url, cited.source) == ("보안 | 분실 <대응> [v2]", WIKI_URL, "kb/laptop.md")
    record = load_answer(open_store(settings), answer.answer_id or "")
    assert record is not None
    assert {c.url for c in record.contexts if c.chunk_id == cited.chunk_id} == {WIKI_URL}
    # Records written before urls were kept still load.
    old = record.model_dump(mode="json")
    for context in old["contexts"]:
        del context["url"]
    assert all(c.url == "" for c in AnswerRecord.model_validate(old).contexts)


def test_html_canonical_link_and_documents_without_url(kb: tuple[Settings, Agent]) -> None:
    _, agent = kb
    runbook = _ask(agent, "How do I roll back the web service?").citations[0]
    assert (runbook.title, runbook.url) == ("Deploy runbook", RUNBOOK_URL)  # canonical wins over og:url
    parking = _ask(agent, "주차 지원금은 얼마인가요?").citations[0]
    assert (parking.title, parking.url) == ("주차 지원", "")


def test_slack_renders_a_linked_source_with_its_title_escaped(kb: tuple[Settings, Agent]) -> None:
    from bots.slack.render import render_answer

    answer = _ask(kb[1], "노트북을 분실하면 어디에 연락하나요?")
    blocks = json.dumps([b for m in render_answer(answer) for b in m.blocks], ensure_ascii=False)
    link = "<https://wiki.example.com/security?page=laptop&amp;v=2|보안 \u00a6 분실 &lt;대응&gt; [v2]>"
    assert link in blocks
    assert "kb/laptop.md" not in blocks  # with a URL the link is the source


def test_discord_renders_a_markdown_link(kb: tuple[Settings, Agent]) -> None:
    from bots.discord.render import render_answer

    answer = _ask(kb[1], "노트북을 분실하면 어디에 연락하나요?")
    fields = [f["value"] for e in render_answer(answer, answer_id=None)["embeds"] for f in e.get("fields", [])]
    assert f"[1] [보안 | 분실 <대응> (v2)]({WIKI_URL})" in "\n".join(fields)


def _citation(**kw: Any) -> Citation:
    base = Citation(n=1, title="t", source="kb/a.md", location="§ A", doc_id="d", chunk_id="d#0", score=1.0)
    return replace(base, **kw)


def test_unsafe_urls_and_titles_are_neutralised() -> None:
    from bots.discord.render import _source_line
    from bots.slack.render import _citation_line

    evil = _citation(title="a|b>c]d[e", url="https://x.example/p|q>r(s)")
    slack = _citation_line(evil)
    assert slack == "`[1]` <https://x.example/p%7Cq%3Er(s)|a\u00a6b&gt;c]d[e> · § A"
    assert _source_line(evil) == "[1] [a|b>c)d(e](https://x.example/p|q%3Er%28s%29) — § A"

    for bad in ("javascript:alert(1)", "ftp://x.example/a", "/wiki/a", "https:///nohost"):
        citation = _citation(url=bad, source=bad)
        assert "<" + bad not in _citation_line(citation) and "](" not in _source_line(citation), bad
    plain = _citation(url="javascript:alert(1)")
    assert _citation_line(plain) == "`[1]` *t* · `kb/a.md` · § A"  # as without a URL
    assert _source_line(plain) == "[1] t · `a.md` — § A"

    long = _citation(url="https://x.example/" + "a" * 2000)  # too long to link within the limits
    assert "<https://" not in _citation_line(long) and "](https://" not in _source_line(long)


def test_console_prints_the_url_after_the_source() -> None:
    from bots.console import render_answer

    answer = AgentAnswer(question="q", condensed_question="q", text="답 [1]", language="ko",
                         citations=[_citation(url=WIKI_URL)])
    assert f"[1] t — kb/a.md, § A <{WIKI_URL}>" in render_answer(answer)


def test_loaders_keep_only_absolute_http_urls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "rel.md").write_text("---\ncanonical_url: /wiki/page\n---\n# 제목\n\n본문입니다.\n", encoding="utf-8")
    (tmp_path / "og.html").write_text(
        '<html><head><meta property="og:url" content="https://og.example.com/p"></head><body>body</body></html>',
        encoding="utf-8",
    )
    rows = [{"id": "r1", "title": "t1", "text": "one", "url": "ftp://files.example.com/a"},
            {"id": "r2", "title": "t2", "text": "two", "url": "http://corpus.example.com/2"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")

    def doc(name: str) -> list[Document]:
        return [d for d in load_file(tmp_path / name) if isinstance(d, Document)]

    with caplog.at_level(logging.WARNING, logger="rag.loaders"):
        rel = doc("rel.md")[0]
        assert [(d.doc_id, d.url) for d in doc("c.jsonl")] == [("r1", ""), ("r2", "http://corpus.example.com/2")]
    assert rel.url == "" and rel.title == "제목" and "canonical_url" not in rel.text  # front matter not indexed
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'/wiki/page'" in warned and "'ftp://files.example.com/a'" in warned
    assert doc("og.html")[0].url == "https://og.example.com/p"  # og:url when there is no canonical link


def test_a_url_change_reindexes_and_old_payloads_read_as_no_url(tmp_path: Path) -> None:
    from rag.ingest import document_hash
    from rag.retrieval import passage_from_hit
    from rag.vectorstore import Hit

    settings = make_settings(tmp_path)
    doc = Document(doc_id="d", title="t", source="s", path="p", content_hash="h")
    assert document_hash(doc, settings, None) != document_hash(replace(doc, url=WIKI_URL), settings, None)
    assert passage_from_hit(Hit(id="x", score=1.0, payload={"doc_id": "d", "text": "t"})).url == ""
