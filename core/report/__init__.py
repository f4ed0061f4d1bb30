"""The operator's report: what the bot was asked, how people rated it, what it could not answer,
which documents it leans on, and how its adapters trained and gated.

`collect` reads the store's records into plain numbers (no plotting, so Slack's App Home shares it
from a Lambda); `gaps` groups what went wrong by topic; `charts` (matplotlib, optional dependency
`report`) draws them; `page` writes one self-contained HTML file.
"""
