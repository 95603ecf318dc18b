"""Who is calling, and what their credentials let them do."""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.auth.tokens import RUN_ACTIONS, RUN_SUBJECTS, Scope
from conveyor.errors import ForbiddenError


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a user, acting through a token with `scopes`.

    Recipe limits (`conditions: {"id": {"$in": [...]}}`) restrict which recipes the token may *run*; reading
    the user's own jobs and results needs only a valid token (Omnitool's client polls with its exec token).
    """

    user_id: str
    user_name: str
    is_admin: bool
    org_id: str | None
    scopes: tuple[Scope, ...]
    token_id: str | None = None
    token_expires_at: int | None = None  # epoch seconds
    api_key_id: str | None = None  # set when the caller used an API key rather than a JWT
    key_kind: str | None = None  # personal | org | recipe

    def can(self, action: str, subject: str = "Workflow") -> bool:
        """Whether some scope grants `action` on `subject`, whatever its recipe limits."""
        return any(scope.grants(action, subject) for scope in self.scopes)

    def require(self, action: str, subject: str = "Workflow") -> None:
        if not self.can(action, subject):
            raise ForbiddenError(f"this token does not allow {action} on {subject}")

    def may_run(self, recipe_id: str) -> bool:
        """Whether a scope allows running recipe `recipe_id` (exec or manage, on Workflow or all)."""
        return any(
            scope.action in RUN_ACTIONS
            and scope.subject in RUN_SUBJECTS
            and (scope.recipe_ids is None or recipe_id in scope.recipe_ids)
            for scope in self.scopes
        )

    def require_run(self, recipe_id: str) -> None:
        if not self.may_run(recipe_id):
            if any(s.action in RUN_ACTIONS and s.subject in RUN_SUBJECTS for s in self.scopes):
                raise ForbiddenError(f"this token is not allowed to run recipe {recipe_id!r}")
            raise ForbiddenError("this token does not allow running recipes (needs exec on Workflow)")

    def may_manage(self, recipe_id: str) -> bool:
        """Whether a scope allows changing recipe `recipe_id` (`manage` on Workflow or all, within its limits)."""
        return any(
            scope.grants("manage", "Workflow") and (scope.recipe_ids is None or recipe_id in scope.recipe_ids)
            for scope in self.scopes
        )

    def require_manage(self, recipe_id: str | None = None) -> None:
        """`manage` on this recipe; with None (a new recipe, an import) `manage` without recipe limits."""
        allowed = (
            any(s.grants("manage", "Workflow") and s.recipe_ids is None for s in self.scopes)
            if recipe_id is None
            else self.may_manage(recipe_id)
        )
        if not allowed:
            what = "new recipes" if recipe_id is None else f"recipe {recipe_id!r}"
            raise ForbiddenError(f"this token may not manage {what} (needs manage on Workflow)")

    @property
    def unlimited_manager(self) -> bool:
        """A token that may do anything its user may (`manage all` without recipe limits)."""
        return any(s.action == "manage" and s.subject == "all" and s.recipe_ids is None for s in self.scopes)

    @property
    def acts_as_admin(self) -> bool:
        """An admin's powers (every recipe, anyone's tokens) need an admin user *and* an unlimited `manage all`
        token: the exec token an admin hands to a client must not carry them."""
        return self.is_admin and self.unlimited_manager
