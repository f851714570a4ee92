"""One audit reading: the SQL the Model promotion page reads (``audit.queries``) and the Python replay the watch,
the rollback and the deploy events read (``audit.replay``) agree on every generated history.

Seeded histories, plausible and adversarial (crashes between the two rows of a change, versions re-created after
the registered model was deleted, a version promoted twice, rollbacks to older versions, drift on and off the
record), are written through the package's own audit writer (hash chain, idempotency keys, the action constraint)
into a table the real migrations created on the session's PostgreSQL server. Both readings then run: the SQL one
for all models at once (champions, open drift, latest events), the Python one per model. On a disagreement the
history is shrunk to the fewest rows that still disagree, and printed.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import psycopg2
import pytest
from psycopg2 import sql

from include.promotion.audit import queries
from include.promotion.audit.log import AuditEntry, AuditLog
from include.promotion.audit.replay import AuditedState, audited_state
from include.promotion.audit.schema import AUDIT_TABLE, upgrade
from include.promotion.states import AuditAction, Stage, Status
from include.promotion.watch.reconcile import NO_LONGER_FOUND

pytestmark = pytest.mark.usefixtures("services")

SEED = 20261205
HISTORIES = 240
DRIFT_REASONS = ("alias 'champion' points at v9", "v2 promotion_status is 'archived'", "", None, "v1 was deleted")
A = AuditAction


@dataclass(frozen=True)
class Row:
    """One audit row to write; rows sharing ``change`` are one registry change (as the package writes them)."""

    version: str
    action: AuditAction
    to_stage: str | None = None
    reason: str | None = None
    actor: str = "dag"
    change: int = 0

    def __str__(self) -> str:
        return f"#{self.change} {self.action} v{self.version} to_stage={self.to_stage} reason={self.reason!r}"


@dataclass
class World:
    """What a generator believes the registry holds; adversarial steps ignore it on purpose."""

    rng: random.Random
    rows: list[Row] = field(default_factory=list)
    next_version: int = 1
    champion: str | None = None
    challenger: str | None = None
    served: list[str] = field(default_factory=list)
    changes: int = 0

    def change(self, *rows: Row, crash: bool = False) -> None:
        """Write a change's rows; a crash writes only the first (the worker died between them)."""
        self.changes += 1
        kept = rows[:1] if crash and len(rows) > 1 else rows
        self.rows += [Row(r.version, r.action, r.to_stage, r.reason, r.actor, self.changes) for r in kept]

    def crash(self) -> bool:
        return self.rng.random() < 0.12

    def any_version(self) -> str:
        return str(self.rng.randint(1, max(1, self.next_version - 1)))

    def candidate(self) -> None:
        version = str(self.next_version)
        self.next_version += 1
        self.change(Row(version, A.REGISTER, Stage.NONE, "gates passed"))
        if self.challenger is not None:
            self.change(Row(self.challenger, A.SUPERSEDE, Stage.NONE, f"superseded by v{version}"))
        self.change(Row(version, A.STAGE, Stage.STAGING, "passed evaluation gates"))
        self.challenger = version

    def promote(self, version: str | None = None) -> None:
        version = version or self.challenger
        if version is None:
            return self.candidate()
        if self.rng.random() < 0.8:
            self.change(Row(version, A.APPROVE, Stage.STAGING, "lgtm", actor="alice"))
        rows = [Row(version, A.PROMOTE, Stage.PRODUCTION, "approved", actor="alice")]
        if self.champion is not None and self.champion != version:
            rows.append(Row(self.champion, A.ARCHIVE, Stage.ARCHIVED, f"replaced by v{version}", actor="alice"))
        self.change(*rows, crash=self.crash())
        self.challenger = None if self.challenger == version else self.challenger
        self.champion = version
        self.served.append(version)

    def reject(self) -> None:
        if self.challenger is not None:
            self.change(Row(self.challenger, A.REJECT, Stage.NONE, "no", actor="bob"))
            self.challenger = None

    def rollback(self, action: AuditAction | None = None) -> None:
        """A rollback to the previous champion, an older one, or (adversarial) any version; or the check's."""
        if self.champion is None:
            return
        earlier = [v for v in self.served if v != self.champion]
        if earlier and self.rng.random() < 0.85:
            target = earlier[-1] if self.rng.random() < 0.6 else self.rng.choice(earlier)
        else:
            target = self.any_version()
        if target == self.champion:
            return
        restore, demote = (action, action) if action else (A.ROLLBACK_RESTORE, A.ROLLBACK_DEMOTE)
        self.change(
            Row(target, restore, Stage.PRODUCTION, "bad"),
            Row(self.champion, demote, Stage.ARCHIVED, "bad"),
            crash=self.crash(),
        )
        self.champion = target
        self.served.append(target)

    def drift(self) -> None:
        reason = self.rng.choice(DRIFT_REASONS)
        roll = self.rng.random()
        if roll < 0.5:
            self.change(Row(self.any_version(), A.DRIFT_DETECTED, reason=reason, actor="registry-watch"))
        else:
            actor = NO_LONGER_FOUND if roll < 0.75 else "registry-watch"
            self.change(Row(self.any_version(), A.DRIFT_RESTORE, reason=reason, actor=actor))

    def recreate(self) -> None:
        """The registered model was deleted and re-created: version numbers start again at 1."""
        self.next_version = 1
        self.champion = self.challenger = None
        self.served = []
        self.candidate()

    def forged(self) -> None:
        """Any action on any version with any stage: what the readings must still agree on."""
        action = self.rng.choice([a for a in AuditAction])
        stage = self.rng.choice([Stage.PRODUCTION, Stage.ARCHIVED, Stage.STAGING, None])
        self.change(Row(self.any_version(), action, stage, self.rng.choice(DRIFT_REASONS)))


def history(rng: random.Random) -> list[Row]:
    world = World(rng)
    adversarial = rng.random() < 0.4
    steps = {
        world.candidate: 5,
        world.promote: 5,
        world.reject: 1,
        world.rollback: 2,
        (lambda: world.rollback(A.POST_CHECK_ROLLBACK)): 2,
        world.drift: 3,
        (lambda: world.promote(world.champion or world.any_version())): 1 if adversarial else 0,
        world.recreate: 0.5 if adversarial else 0,
        world.forged: 2 if adversarial else 0,
    }
    for _ in range(rng.randint(1, 22)):
        rng.choices(list(steps), weights=list(steps.values()))[0]()
    return world.rows


@pytest.fixture(scope="module")
def conn(services) -> Iterator[psycopg2.extensions.connection]:
    """A fresh database on the session's server, its audit table created by the package's migrations."""
    name = f"agree_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(services.postgres_uri("postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    connection = psycopg2.connect(services.postgres_uri(name))
    connection.autocommit = True
    try:
        upgrade(connection)
        yield connection
    finally:
        connection.close()
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


def write(conn, model: str, rows: Sequence[Row]) -> None:
    """Through the package's writer: one ``AuditLog`` per change, as the package's tasks write."""
    logs: dict[int, AuditLog] = {}
    for row in rows:
        log = logs.setdefault(row.change, AuditLog(conn, model, f"{model}-{row.change}-{uuid.uuid4().hex[:6]}"))
        from_stage = None if row.to_stage is None else Stage.NONE
        entry = AuditEntry(model, row.version, row.action, from_stage, row.to_stage, row.actor, row.reason, "d", "r")
        assert log.record(entry, detail=row.reason or "")


def replayed(conn, models: Sequence[str]) -> dict[str, AuditedState]:
    rows = queries.fetch(
        conn,
        f"SELECT id, model_name, version, action, to_stage, reason, created_at FROM {AUDIT_TABLE} "
        "WHERE model_name = ANY(%s) ORDER BY id",
        (list(models),),
    )
    by_model: dict[str, list[dict]] = {m: [] for m in models}
    for row in rows:
        by_model[row["model_name"]].append(row)
    return {model: audited_state(model, model_rows) for model, model_rows in by_model.items()}


def python_view(state: AuditedState, version: str) -> str | None:
    """What the replay says of a version: serving now, served and ended, or never served."""
    if state.statuses.get(version) == Status.PRODUCTION:
        return queries.IN_SERVICE
    return queries.ENDED if version in state.champion_history else None


def disagreements(conn, models: Sequence[str], versions: dict[str, set[str]]) -> dict[str, list[str]]:
    """{model: what the two readings disagree on}; SQL: one call per reading for every model."""
    champions = queries.audited_champions(conn, models)
    drift = queries.open_drift(conn, models)
    events = queries.pair_events(conn, [(m, v) for m in models for v in sorted(versions[m])])
    states = replayed(conn, models)
    found: dict[str, list[str]] = {}
    for model in models:
        state, problems = states[model], []
        if champions.get(model) != state.champion:
            problems.append(f"champion: SQL v{champions.get(model)}, replay v{state.champion}")
        if set(drift.get(model, [])) != set(state.open_drift):
            problems.append(f"open drift: SQL {sorted(drift.get(model, []))}, replay {sorted(state.open_drift)}")
        model_events = events.get(model, {})
        if model_events != queries.version_events(conn, model, sorted(versions[model])):
            problems.append("pair_events and version_events differ")
        for version in sorted(versions[model]):
            page = queries.standing(model_events, version, champions.get(model))
            if page != python_view(state, version):
                problems.append(f"v{version}: SQL {page}, replay {python_view(state, version)}")
        if problems:
            found[model] = problems
    return found


def shrink(conn, rows: list[Row]) -> tuple[list[Row], list[str]]:
    """The fewest rows (one removed at a time while the disagreement stays) that still disagree."""

    def check(candidate: list[Row]) -> list[str]:
        model = f"shrink-{uuid.uuid4().hex[:8]}"
        write(conn, model, candidate)
        return disagreements(conn, [model], {model: {r.version for r in candidate}}).get(model, [])

    problems = check(rows)
    i = 0
    while i < len(rows):
        smaller = rows[:i] + rows[i + 1 :]
        if smaller and (still := check(smaller)):
            rows, problems = smaller, still
        else:
            i += 1
    return rows, problems


P, X = Stage.PRODUCTION, Stage.ARCHIVED
# The disagreements the generated histories found, each fixed in ``queries`` (replay's reading is the rule), by name:
# (rows as (version, action[, to_stage[, reason]]), the champion, open drift, {version: standing}).
FOUND = {
    "a promotion that crashed before its archive row still ends the service of the champion it replaced": (
        [("1", A.PROMOTE, P), ("2", A.PROMOTE, P)],
        "2",
        set(),
        {"1": queries.ENDED, "2": queries.IN_SERVICE},
    ),
    "a rollback that crashed before its demote row still ends the service of the champion it replaced": (
        [("1", A.PROMOTE, P), ("2", A.PROMOTE, P), ("1", A.ARCHIVE, X), ("1", A.ROLLBACK_RESTORE, P)],
        "1",
        set(),
        {"1": queries.IN_SERVICE, "2": queries.ENDED},
    ),
    "a register, stage or approve row of the champion takes it out of production (a re-created model's v1)": (
        [("1", A.PROMOTE, P), ("1", A.REGISTER, Stage.NONE)],
        None,
        set(),
        {"1": queries.ENDED},
    ),
    "a drift recorded without a reason is cleared by a restore with an empty one": (
        [("1", A.DRIFT_DETECTED, None, None), ("1", A.DRIFT_RESTORE, None, ""), ("1", A.DRIFT_DETECTED, None, "x")],
        None,
        {"x"},
        {"1": None},
    ),
    "a version the check restored and later demoted served: the later demotion hides not the restore": (
        [("3", A.POST_CHECK_ROLLBACK, P), ("3", A.POST_CHECK_ROLLBACK, X)],
        None,
        set(),
        {"3": queries.ENDED},
    ),
}


@pytest.mark.parametrize("case", FOUND)
def test_a_disagreement_found_once_stays_fixed(conn, case: str) -> None:
    entries, champion, drift, standings = FOUND[case]
    model = f"found-{uuid.uuid4().hex[:8]}"
    write(conn, model, [Row(*entry, change=i) for i, entry in enumerate(entries)])
    assert disagreements(conn, [model], {model: set(standings)}) == {}
    state = replayed(conn, [model])[model]
    assert (state.champion, set(state.open_drift)) == (champion, drift)
    assert {v: python_view(state, v) for v in standings} == standings


def test_the_page_sql_and_the_python_replay_agree_on_every_generated_history(conn) -> None:
    rng = random.Random(SEED)
    histories = {f"agree-{i:03d}": history(rng) for i in range(HISTORIES)}
    for model, rows in histories.items():
        write(conn, model, rows)
    models = sorted(histories)
    versions = {m: {r.version for r in rows} for m, rows in histories.items()}
    assert sum(len(rows) for rows in histories.values()) > 2000  # enough to mean something

    found = disagreements(conn, models, versions)
    kinds: dict[str, list[str]] = {}  # one minimal history per kind of disagreement
    for model in sorted(found, key=lambda m: len(histories[m])):
        for problem in found[model]:
            kinds.setdefault(kind(problem), []).append(model)
    report = []
    for what, where in list(kinds.items())[:4]:
        rows, problems = shrink(conn, histories[where[0]])
        report.append(
            f"{what} ({len(where)} histories; {where[0]} shrunk to {len(rows)} rows):\n    "
            + "\n    ".join(map(str, rows))
            + "\n  reads: "
            + "; ".join(problems)
        )
    assert not found, f"{len(found)} of {HISTORIES} histories read differently:\n  " + "\n  ".join(report)


def kind(problem: str) -> str:
    """A disagreement without its version numbers: what groups the same mistake across histories."""
    return "".join(c for c in problem if not c.isdigit())
