"""Every table Keel owns, registered on one metadata: what Alembic compares and migrates, and
what ``keel db upgrade`` grants the application role.

Each domain keeps its tables in its own ``models.py``; this module only gathers them, so a new
domain's models are added here once. ``api/db`` (the base, engines, sessions) imports no domain:
whatever needs every table — Alembic's ``env.py``, the role grants — takes :data:`metadata` from
here.
"""

from __future__ import annotations

from api.audit import models as audit
from api.auth import models as auth
from api.billing import models as billing
from api.db.base import Base
from api.events import models as events
from api.flags import models as flags
from api.members import models as members
from api.orgs import models as orgs
from api.system import models as system
from api.tokens import models as tokens
from api.webhooks import models as webhooks

DOMAINS = (auth, orgs, members, tokens, audit, events, flags, system, webhooks, billing)

metadata = Base.metadata
