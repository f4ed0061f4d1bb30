"""The report's one font: NanumGothic, shipped by the `koreanize-matplotlib` wheel (OFL font).

Used twice, so Korean never renders as tofu boxes whatever the reader's machine has: matplotlib
draws the charts with it, and the HTML embeds it as a `@font-face`, subset to the characters the
page uses (fontTools, a matplotlib dependency), so the file stays small and self-contained.
"""

from __future__ import annotations

import base64
import importlib.util
import io
from functools import cache
from pathlib import Path

from core.errors import ConfigError

FAMILY = "EchoRAG Nanum"
INSTALL_HINT = "the report needs its optional packages: pip install -r requirements-report.txt"


def require_packages() -> None:
    """Fail fast, in one line, when the report's optional packages are not installed."""
    missing = [name for name in ("matplotlib", "jinja2", "fontTools") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not installed; {INSTALL_HINT}")
    font_path()


@cache
def font_path() -> Path:
    """NanumGothic.ttf inside the installed wheel (found without importing the package, whose
    import would change matplotlib's global settings)."""
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(INSTALL_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / "fonts" / "NanumGothic.ttf"
    if not path.is_file():
        raise ConfigError(f"{path} is missing; {INSTALL_HINT}")
    return path


def font_face_css(text: str) -> str:
    """A `@font-face` rule with the font subset to `text`'s characters, as a data URL."""
    from fontTools import subset

    options = subset.Options()
    options.layout_features = ["*"]
    options.notdef_outline = True
    options.drop_tables += ["TSI0", "TSI1", "TSI2", "TSI3", "TSI5"]  # VTT hinting sources: not needed to render
    font = subset.load_font(str(font_path()), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text="".join(sorted(set(text) | set(" 0123456789"))))
    subsetter.subset(font)
    buffer = io.BytesIO()
    subset.save_font(font, buffer, options)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'@font-face {{ font-family: "{FAMILY}"; src: url(data:font/ttf;base64,{data}) format("truetype"); '
            "font-weight: 100 900; }")
