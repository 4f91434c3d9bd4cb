"""Delete what setup made: its resources in reverse, this deployment's only, and the checklist.

Cleanup follows the ownership rule of :mod:`skysurvey.aws_setup`: what carries the tag
``skysurvey:deployment=<suffix>`` is deleted; everything else is listed and left. A deployment
a CloudFormation stack made is refused whole (delete the stack). The deployment's names come
from the env file setup wrote (:func:`require_names`): cleanup never derives a new suffix.
"""

from __future__ import annotations

from . import aws
from .aws_resources import (
    DEPLOYMENT_TAG,
    STACK_TAG,
    FunctionSettings,
    Names,
    Resource,
    stack_message,
)
from .aws_setup import resolve_names, setup_resources
from .errors import ConfigError

__all__ = ["checklist", "cleanup_resources", "require_names", "run_cleanup"]


def cleanup_resources(names: Names) -> list[Resource]:
    """What setup makes, in reverse (the trigger goes with the function and the raw bucket).

    Parameters
    ----------
    names : Names
        The deployment's names (:func:`require_names`).

    Returns
    -------
    list of Resource
        The resources setup owns (tagged), last made first.
    """
    everything = setup_resources(names, FunctionSettings(None), trigger=False)
    return [r for r in reversed(everything) if r.owned]


def run_cleanup(resources: list[Resource], names: Names,
                dry_run: bool = False) -> list[tuple[str, str]]:
    """Delete what carries this deployment's tag; list and leave everything else. A
    deployment a CloudFormation stack made is refused whole, before anything is deleted.

    Parameters
    ----------
    resources : list of Resource
        :func:`cleanup_resources`' list.
    names : Names
        The deployment whose tag marks what is deleted.
    dry_run : bool
        Report ``would delete``; delete nothing.

    Returns
    -------
    list of (str, str)
        ``(resource, state)``: ``deleted``, ``already gone``, ``left alone: <why>``.

    Raises
    ------
    ConfigError
        A resource belongs to a CloudFormation stack (delete the stack instead).
    StorageError
        A deletion failed (what was deleted before it stays deleted).
    """
    for resource in resources:
        try:
            stack = (resource.tags() or {}).get(STACK_TAG)
        except ConfigError:
            continue
        if stack:
            raise ConfigError(resource.name, stack_message(stack))
    states = []
    for resource in resources:
        try:
            tags = resource.tags()
        except ConfigError as exc:
            states.append((resource.name, f"left alone ({exc.cause})"))
            continue
        if tags is None:
            states.append((resource.name, "already gone"))
        elif tags.get(DEPLOYMENT_TAG) != names.suffix:
            owner = tags.get(DEPLOYMENT_TAG)
            why = (f"tagged for deployment '{owner}'" if owner else
                   f"not tagged {DEPLOYMENT_TAG}={names.suffix}"
                   + (" (an older setup: run setup_aws.py once to adopt it)"
                      if tags.get("project") == "skysurvey" else ""))
            states.append((resource.name, f"left alone: {why}"))
        elif dry_run:
            states.append((resource.name, "would delete"))
        else:
            try:
                resource.delete()
            except aws.botocore_errors() as exc:
                raise aws.translate(exc, resource.name) from None
            states.append((resource.name, "deleted"))
    return states


def checklist(resources: list[Resource], names: Names) -> list[tuple[str, str]]:
    """``(resource, state)``: ``gone``, ``left`` (not ours) or ``STILL THERE`` (ours).

    Parameters
    ----------
    resources : list of Resource
        :func:`cleanup_resources`' list.
    names : Names
        The deployment whose tag makes a resource ours.

    Returns
    -------
    list of (str, str)
    """
    rows = []
    for resource in resources:
        try:
            tags = resource.tags()
        except ConfigError:
            rows.append((resource.name, "left"))
            continue
        if tags is None:
            rows.append((resource.name, "gone"))
        else:
            ours = tags.get(DEPLOYMENT_TAG) == names.suffix
            rows.append((resource.name, "STILL THERE" if ours else "left"))
    return rows


def require_names(saved: dict[str, str], suffix: str | None = None,
                  region: str | None = None) -> Names:
    """The names of a deployment set up before (cleanup never derives a new suffix).

    Parameters
    ----------
    saved : dict of str to str
        The env file setup wrote.
    suffix, region : str, optional
        ``--suffix`` and ``--region`` (None: the env file's).

    Returns
    -------
    Names

    Raises
    ------
    ConfigError
        No suffix given nor saved, or no region or credentials (:func:`resolve_names`).
    """
    suffix = suffix or saved.get("SKYSURVEY_SUFFIX")
    if not suffix:
        raise ConfigError("env file", "no SKYSURVEY_SUFFIX: nothing was set up from here "
                                      "(run scripts/setup_aws.py first, or pass --suffix)")
    return resolve_names(suffix, region, saved)
