"""Discord's slash commands as registered (PUT applications/{id}/commands), and who may run them.

The gateway process builds its discord.py command tree from the same definitions, so the two ways
in (Interactions endpoint, gateway) always offer the same commands.
"""

from __future__ import annotations

from typing import Any

MANAGE_GUILD = 0x20
ADMINISTRATOR = 0x8
# The bot's invite permissions: View Channels (see reactions there), Send Messages + Embed Links
# (training announcements), Send Messages in Threads + Read Message History (answers to follow-ups
# in an answer's thread, posted as replies). `/ask` answers are interaction responses and need none.
BOT_PERMISSIONS = 0x400 | 0x800 | 0x4000 | 0x10000 | 0x4000000000  # = 274877991936

ASK_ABOUT = "Ask EchoRAG about this"  # the message context-menu command
# Where a command may be installed (0 a server, 1 a user) and used (0 a server, 1 the bot's DM,
# 2 group DMs and other DMs): asking works everywhere; retraining only on a server.
EVERYWHERE = {"integration_types": [0, 1], "contexts": [0, 1, 2]}

# The commands, as registered with PUT applications/{id}/commands (see handlers/cli/discord.py):
# a PUT replaces the whole list, so registering again changes nothing.
COMMANDS: list[dict[str, Any]] = [
    {
        "name": "ask",
        "type": 1,
        **EVERYWHERE,
        "description": "Ask the knowledge base a question",
        "description_localizations": {"ko": "지식 베이스에 질문합니다"},
        "options": [
            {
                "type": 3,
                "name": "question",
                "description": "Your question",
                "description_localizations": {"ko": "질문"},
                "required": True,
                "max_length": 1500,
            }
        ],
    },
    {
        "name": "retrain",
        "type": 1,
        "description": "Retrain the answer model from the feedback (admins only)",
        "description_localizations": {"ko": "피드백으로 답변 모델을 다시 학습합니다 (관리자 전용)"},
        "default_member_permissions": str(MANAGE_GUILD),
        "integration_types": [0],
        "contexts": [0],
        "options": [
            {
                "type": 5,  # BOOLEAN
                "name": "force",
                "description": "Retrain even if there are no new ratings since the last run",
                "description_localizations": {"ko": "지난 학습 이후 새 평가가 없어도 다시 학습합니다"},
                "required": False,
            }
        ],
    },
    {  # right-click a message → Apps: its text becomes the question
        "name": ASK_ABOUT,
        "type": 3,
        "name_localizations": {"ko": "EchoRAG에게 이 메시지 묻기"},
        **EVERYWHERE,
    },
]


def has_manage_server(permissions: str | int | None) -> bool:
    """Manage Server or Administrator in a member's permission bitfield (a decimal string on the
    wire). The ADMIN_USER_IDS allow-list is checked by core.retrain on top of this."""
    try:
        bits = int(permissions or 0)
    except (TypeError, ValueError):
        return False
    return bool(bits & (MANAGE_GUILD | ADMINISTRATOR))
