"""Read files into documents: .md .txt .html .pdf and `{"id","title","text"}` JSONL corpora.

A file that cannot be read becomes a `LoadFailure` (path + reason) instead of an exception, so one
bad file never aborts an ingestion run; the caller counts and reports it.

A document may carry the URL it is published at (markdown front matter `url:`/`canonical_url:`,
HTML `<link rel="canonical">` or `og:url`, a corpus row's `url`): citations then link to it. Only
absolute http(s) URLs are kept (`safe_url`), since a chat renders them as clickable links.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".jsonl"})
_ENCODINGS = ("utf-8-sig", "cp949")  # Korean files saved by older Windows tools are often CP949


@dataclass(frozen=True)
class Section:
    """A part of a document that chunks never cross; `location` is shown in citations."""

    text: str
    location: str = ""
    heading: str = ""  # indexed with each chunk of the section (context the body often omits)


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    source: str  # what a citation shows: "<folder>/<file>" relative to the ingested folder, or "corpus.jsonl#id"
    path: str  # the file it came from (absolute); `--prune` uses it
    sections: list[Section] = field(default_factory=list)
    content_hash: str = ""  # of the raw content; a change means re-indexing
    url: str = ""  # where the document is published (absolute http/https), "" when unknown

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


@dataclass(frozen=True)
class LoadFailure:
    path: str
    reason: str
    # Set when the file (or corpus row) was read fine but holds no text: the document `doc_id`
    # now says nothing, so what it said before must leave the index.
    doc_id: str | None = None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_url(value: object, where: str) -> str:
    """`value` as an absolute http(s) URL, or "" (logged) for anything else: a relative path, another
    scheme (`javascript:`, `ftp:`) or whitespace inside would make a broken or unsafe chat link."""
    if value is None or value == "":
        return ""
    url = value.strip() if isinstance(value, str) else ""
    try:
        parts = urlsplit(url)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. a malformed IPv6 host
        ok = False
    if not ok or re.search(r"[\s\x00-\x1f\x7f]", url):
        log.warning("%s: ignoring url %r (not an absolute http(s) URL)", where, str(value)[:200])
        return ""
    return url


def _decode(data: bytes) -> str:
    for encoding in _ENCODINGS:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ValueError("not UTF-8 or CP949 text")


# --- markdown ---------------------------------------------------------------------------------

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(\*\*|__|\*|`)(?=\S)(.+?)(?<=\S)\1")


def _clean_markdown_line(line: str) -> str:
    line = _LINK.sub(r"\1", line)
    line = _EMPHASIS.sub(r"\2", line)
    return re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "", line)  # list markers


_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL | re.MULTILINE)
_FRONT_KEY = re.compile(r"^([A-Za-z_][\w-]*)[ \t]*:[ \t]*(.*?)[ \t]*$")


def front_matter(text: str) -> tuple[dict[str, str], str]:
    """(top-level `key: value` pairs, the rest) of a markdown text opening with a YAML front matter
    block; ({}, text) when it has none. Only plain scalars are read (no YAML dependency): `title`,
    `url` and `canonical_url` are all ingestion uses. A block with a line that is neither `key: …`,
    an indented/list continuation nor a comment is not front matter (a leading `---` rule)."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    fields: dict[str, str] = {}
    for line in match.group(1).splitlines():
        if not line.strip() or line.lstrip().startswith("#") or line[:1] in (" ", "\t", "-"):
            continue
        key = _FRONT_KEY.match(line)
        if key is None:
            return {}, text
        value = key.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        fields.setdefault(key.group(1).lower(), value)
    return fields, text[match.end() :]


def markdown_sections(text: str) -> tuple[str | None, list[Section]]:
    """Split at headings (location "§ heading"); returns the first H1 as the title, if any."""
    title: str | None = None
    sections: list[Section] = []
    heading = ""
    lines: list[str] = []
    in_fence = False

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section(body, f"§ {heading}" if heading else "", heading))
        lines.clear()

    for raw in text.splitlines():
        if raw.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        match = None if in_fence else _HEADING.match(raw)
        if match:
            flush()
            heading = _clean_markdown_line(match.group(2))
            if title is None and len(match.group(1)) == 1:
                title = heading
            continue
        lines.append(raw if in_fence else _clean_markdown_line(raw))
    flush()
    return title, sections


# --- html -------------------------------------------------------------------------------------

_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "svg", "head"})
_BLOCK_TAGS = frozenset(
    {"p", "div", "br", "li", "tr", "section", "article", "table", "ul", "ol", "blockquote", "pre", "dd", "dt"}
)
_HEADING_TAGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


class _HtmlText(HTMLParser):
    """HTML → markdown-like text: headings as '#' lines, blocks as line breaks, no script/style."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self.canonical = ""  # <link rel="canonical" href>
        self.og_url = ""  # <meta property="og:url" content>: the fallback
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("link", "meta"):
            attr = {name.lower(): (value or "").strip() for name, value in attrs}
            if tag == "link" and "canonical" in attr.get("rel", "").lower().split():
                self.canonical = self.canonical or attr.get("href", "")
            elif tag == "meta" and attr.get("property", "").lower() == "og:url":
                self.og_url = self.og_url or attr.get("content", "")
        elif tag == "title":
            self._in_title = True
        elif tag in _SKIP_TAGS:
            self._skip += 1
        elif tag in _HEADING_TAGS:
            self.parts.append("\n\n" + "#" * _HEADING_TAGS[tag] + " ")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _HEADING_TAGS:
            self.parts.append("\n\n")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(re.sub(r"[ \t\r\n]+", " ", data))


def html_to_markdown(html: str) -> tuple[str, str]:
    """(title, markdown-like body) of an HTML page."""
    title, body, _ = _parse_html(html)
    return title, body


def _parse_html(html: str) -> tuple[str, str, str]:
    """(title, markdown-like body, canonical URL as written: the rel=canonical link, else og:url)."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    body = "".join(parser.parts)
    body = "\n".join(line.strip() for line in body.splitlines())
    return parser.title.strip(), re.sub(r"\n{3,}", "\n\n", body).strip(), parser.canonical or parser.og_url


# --- per-format loaders -----------------------------------------------------------------------


def _text_document(path: Path, data: bytes, kind: str, source: str) -> Document:
    text = _decode(data)
    title: str | None = None
    url = ""
    if kind == "html":
        html_title, text, url = _parse_html(text)
        title = html_title or None
    elif kind == "md":
        meta, text = front_matter(text)
        title = meta.get("title") or None
        url = meta.get("url") or meta.get("canonical_url", "")
    if kind == "txt":
        sections = [Section(text.strip())] if text.strip() else []
    else:
        md_title, sections = markdown_sections(text)
        title = title or md_title
    return Document(
        doc_id=str(path),
        title=title or path.stem,
        source=source,
        path=str(path),
        sections=sections,
        content_hash=_sha256(data),
        url=safe_url(url, str(path)),
    )


def _pdf_document(path: Path, data: bytes, source: str) -> Document:
    import io

    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        raise ValueError("encrypted PDF")
    sections = []
    for number, page in enumerate(reader.pages, start=1):
        text = (page.extract_text() or "").strip()
        if text:
            sections.append(Section(text, f"p. {number}"))
    meta_title = (reader.metadata.title if reader.metadata else None) or ""
    return Document(
        doc_id=str(path),
        title=str(meta_title).strip() or path.stem,
        source=source,
        path=str(path),
        sections=sections,
        content_hash=_sha256(data),
    )


def _jsonl_documents(path: Path) -> Iterator[Document | LoadFailure]:
    """Each row is its own document (doc_id = row id); a bad row fails alone."""
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield LoadFailure(where, f"invalid JSON: {exc}")
                continue
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or row.get("id") in (None, ""):
                yield LoadFailure(where, 'expected {"id", "title", "text"} with a string text')
                continue
            doc_id = str(row["id"])
            title = str(row.get("title") or doc_id)
            text = row["text"].strip()
            if not text:
                yield LoadFailure(where, "no text found", doc_id=doc_id)
                continue
            yield Document(
                doc_id=doc_id,
                title=title,
                source=f"{path.name}#{doc_id}",
                path=str(path),
                sections=[Section(text)],
                content_hash=_sha256(json.dumps([title, text], ensure_ascii=False).encode()),
                url=safe_url(row.get("url"), where),  # `document_hash` covers a changed url
            )


def load_file(path: Path, *, source: str | None = None) -> Iterator[Document | LoadFailure]:
    """Documents of one file; failures are yielded, never raised. `source`: what citations show
    (default: the path)."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        yield LoadFailure(str(path), f"unsupported file type {suffix or '(none)'}")
        return
    try:
        if suffix == ".jsonl":
            yield from _jsonl_documents(path)
            return
        data = path.read_bytes()
        if suffix == ".pdf":
            doc = _pdf_document(path, data, source or str(path))
        else:
            kind = {".txt": "txt", ".html": "html", ".htm": "html"}.get(suffix, "md")
            doc = _text_document(path, data, kind, source or str(path))
    except Exception as exc:  # any parser error: report this file and go on
        yield LoadFailure(str(path), f"{type(exc).__name__}: {exc}".strip())
        return
    if not doc.sections:
        reason = "no text found" + (" (scanned PDF?)" if suffix == ".pdf" else "")
        yield LoadFailure(str(path), reason, doc_id=doc.doc_id)
        return
    yield doc


def discover(paths: list[Path]) -> tuple[dict[Path, str], list[LoadFailure]]:
    """Files to ingest under `paths` (directories recursively, hidden entries skipped), sorted, each
    with the name its citations show: relative to the folder given, under that folder's name
    (`examples/engineering/deploy-runbook.md`), or the bare file name for a file given. Short, the
    same from any working directory, and no absolute path of the ingesting machine in a chat."""
    files: dict[Path, str] = {}
    failures: list[LoadFailure] = []
    for given in paths:
        path = given.expanduser().resolve()
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path)
                if child.is_file() and child.suffix.lower() in SUPPORTED_SUFFIXES and not any(
                    p.startswith(".") for p in rel.parts
                ):
                    files.setdefault(child, (PurePosixPath(path.name or "/") / rel.as_posix()).as_posix())
        elif path.is_file():
            files.setdefault(path, path.name)
        else:
            failures.append(LoadFailure(str(given), "no such file or directory"))
    return files, failures
