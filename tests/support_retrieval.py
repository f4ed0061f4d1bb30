"""Test helpers for retrieval/ingestion: a small knowledge base written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.settings import Settings


def retrieval_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Embedded defaults under `data_dir`, ignoring any `.env` / environment the developer has."""
    return Settings(_env_file=None, data_dir=data_dir, **overrides)


def minimal_pdf(pages: list[str]) -> bytes:
    """A valid PDF with one Helvetica text line per page (enough for pypdf's text extraction)."""
    objects: list[bytes] = []
    n_pages = len(pages)
    font_id = 3 + 2 * n_pages
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, text in enumerate(pages):
        content_id = 4 + 2 * i
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode()
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


HANDBOOK_MD = """# 휴가 규정

에코랩스 임직원의 휴가 종류와 신청 방법을 정리한 규정입니다.

## 연차 휴가

입사 1년이 지나면 매년 15일의 연차 휴가가 주어집니다. 3년 이상 근속하면 2년마다 1일씩 늘어납니다.
사용하지 못한 연차는 다음 해 3월까지 이월할 수 있습니다.

## 병가

병가는 연 10일까지 유급으로 쓸 수 있으며, 3일 이상 연속으로 쓰면 진단서를 제출해야 합니다.
"""

REMOTE_TXT = """재택근무는 주 3일까지 가능합니다. 화요일과 목요일은 팀 전체가 사무실에 출근하는 코어 출근일입니다.
재택근무일에는 오전 10시부터 오후 4시까지 메신저에 접속해 있어야 합니다. 회사 노트북과 VPN만 사용합니다.
"""

DEPLOY_HTML = """<!doctype html><html><head><title>Deploy runbook</title>
<style>body { color: red }</style><script>var secret = "pineapple-token";</script></head>
<body><h1>Deploy runbook</h1>
<p>Production deploys run from the main branch through the release pipeline every weekday at 14:00.</p>
<h2>Rollback</h2>
<p>If the error rate goes above 2% after a release, run <code>make rollback</code> to restore the previous
build within five minutes and page the on-call engineer.</p>
</body></html>
"""

ONCALL_PDF_PAGES = [
    "The on-call rotation changes every Monday at 10:00 and lasts one week.",
    "Escalation policy: if the primary does not acknowledge a page within 15 minutes the secondary is paged.",
]

FAQ_ROWS = [
    {"id": "faq-1", "title": "주차 지원", "text": "사옥 지하 주차장은 사전 등록한 차량만 이용할 수 있으며 월 5만 원을 지원합니다."},
    {"id": "faq-2", "title": "Lunch allowance", "text": "Every employee receives a monthly lunch allowance of 200 dollars."},
]


def write_knowledge_base(root: Path) -> Path:
    """md + txt + html + pdf + jsonl under `root/kb`; returns the folder."""
    kb = root / "kb"
    kb.mkdir(parents=True, exist_ok=True)
    (kb / "휴가-규정.md").write_text(HANDBOOK_MD, encoding="utf-8")
    (kb / "remote.txt").write_text(REMOTE_TXT, encoding="utf-8")
    (kb / "deploy.html").write_text(DEPLOY_HTML, encoding="utf-8")
    (kb / "oncall.pdf").write_bytes(minimal_pdf(ONCALL_PDF_PAGES))
    (kb / "faq.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in FAQ_ROWS) + "\n", encoding="utf-8")
    return kb
