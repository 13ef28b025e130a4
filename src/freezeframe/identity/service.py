"""The identity service as one piece: its file, its tokens, and how it is mounted."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from starlette.routing import Route

from freezeframe.common.web.mount import Mounted, Public

from freezeframe.db.session import Database
from freezeframe.identity.api import ISSUE_PATH as ISSUE
from freezeframe.identity.api import IdentityAPI
from freezeframe.identity.catalog import Catalog
from freezeframe.identity.config import IdentityFile, write_default
from freezeframe.identity.tokens import TokenService

MOUNT = "/identity"


@dataclass
class IdentityService:
    file: IdentityFile
    tokens: TokenService
    # True when the file is the generated default (<data_dir>/identity.yaml): its users get
    # clouds in the generated clouds.yaml.
    generated: bool = False
    # The generated users' passwords, known only when the file was just created.
    passwords: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, db: Database, *, generate: bool, token_expiration: float,
             cache_ttl: float) -> IdentityService:
        """Read the identity file (``errors.Invalid`` if malformed); with ``generate``, create
        the default one first when it does not exist."""
        passwords: dict[str, str] = {}
        if generate and not path.exists():
            try:
                passwords = write_default(path)
            except FileExistsError:        # another process of the same start made it first
                pass
        file = IdentityFile(path)
        return cls(file, TokenService(db, file, expiration=token_expiration, cache_ttl=cache_ttl),
                   generated=generate, passwords=passwords)

    def mounted(self, catalog: Catalog) -> Mounted:
        """The identity API under /identity, and /identity itself answered without a redirect
        (it is the auth_url clients are given); version documents and asking for a token need
        no token."""
        api = IdentityAPI(self.tokens, self.file, catalog)
        return Mounted("identity", MOUNT, api.router(), stop=self.close,
                       public=(Public(""), Public("/v3"), Public(ISSUE, frozenset({"POST"}))),
                       extra_routes=[Route(MOUNT, api.versions, methods=["GET"])])

    def close(self) -> None:
        self.tokens.close()
