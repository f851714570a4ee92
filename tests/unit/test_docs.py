"""The README and docs/ say what the code does: links resolve, the README's example config is valid, and every model
config key and deployment setting is in the configuration reference."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from include.promotion import config

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
REFERENCE = REPO / "docs" / "configuration.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def without_code(text: str) -> str:
    """The Markdown outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for line in without_code(path.read_text()).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in LINK.findall(without_code(doc.read_text())):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading '#{anchor}' in {linked.name}")
    assert not broken, "\n".join(broken)


def test_the_readme_is_for_users() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: internals belong in docs/"
    text = README.read_text()
    for command in ("make run", "make test"):
        assert f"{command}   #" in text or f"{command}    #" in text, f"the README does not open with `{command}`"


def test_the_readmes_example_config_is_valid(tmp_path: Path) -> None:
    text = README.read_text()
    block = re.search(r"```yaml\n(name: .*?)```", text, re.DOTALL)
    assert block, "the README has no example model config"
    path = tmp_path / "example.yaml"
    path.write_text(block.group(1))
    cfg = config.parse_model_config(path)
    assert cfg.approval.reviewers and cfg.gates


def config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every YAML key of a model config, dotted below the top level (``shadow.gates.max_psi``)."""
    keys = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        keys.append(prefix + key)
        for candidate in (info.annotation, *get_args(info.annotation), *_union_members(info.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                keys += config_keys(candidate, f"{prefix}{key}.")
    return keys


def _union_members(annotation: Any) -> list[Any]:
    members = []
    for arg in get_args(annotation):
        members += [arg, *get_args(arg)]
    return members


def test_every_config_key_is_in_the_reference() -> None:
    keys = sorted(set(config_keys(config.ModelConfig)))
    assert "shadow.gates.max_psi" in keys and "data.query" in keys and "estimator.class" in keys
    reference = REFERENCE.read_text()
    parts = [k.split(".") for k in keys]  # documented as its full key or any tail of it (`gates.max_psi`)
    missing = [".".join(p) for p in parts if not any(f"`{'.'.join(p[i:])}`" in reference for i in range(len(p)))]
    assert not missing, f"docs/configuration.md does not document: {missing}"


def test_every_deployment_setting_is_in_the_reference() -> None:
    names = set()
    for path in (REPO / "include" / "promotion").rglob("*.py"):
        names |= set(re.findall(r"\b(PROMOTION_[A-Z_]+[A-Z])\b", path.read_text()))
    names -= {"PROMOTION_RESULT", "PROMOTION_DB"}  # a marker line of the post-promotion check; a prefix in prose
    assert "PROMOTION_SIGNING_KEY" in names
    reference = REFERENCE.read_text()
    assert not [n for n in sorted(names) if n not in reference], "docs/configuration.md lacks some settings"
