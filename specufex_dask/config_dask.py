"""Dask configuration defaults of the package, under the key ``specufex-dask``.

Importing this module registers the defaults in ``specufex-dask.yaml`` (next
to this file) with :func:`dask.config.update_defaults`. Defaults rank below
every user setting, so each key stays overridable the Dask way:

- a YAML file in ``~/.config/dask/`` or ``/etc/dask/`` with the same layout;
- an environment variable, ``DASK_SPECUFEX_DASK__WORKER_THREADS=2``;
- ``dask.config.set({"specufex-dask.worker-threads": 2})``.

Keys: ``worker-threads``, ``blas-threads``, ``worker-mmap-threshold-mb``,
``local-cluster``, ``dashboard-link``, ``chunk-target-mb``, ``retries``,
``svi-steps``.

Examples
--------
>>> from specufex_dask import config_dask
>>> config_dask.get("retries")
2
"""

from __future__ import annotations

import logging
import os
from typing import Any

import dask.config
import yaml

logger = logging.getLogger(__name__)

NAMESPACE = "specufex-dask"
CONFIG_FILE = os.path.join(os.path.dirname(__file__), "specufex-dask.yaml")

with open(CONFIG_FILE, encoding="utf-8") as _file:
    defaults: dict[str, Any] = yaml.safe_load(_file)

dask.config.update_defaults(defaults)

_NO_DEFAULT = object()


def get(key: str, default: Any = _NO_DEFAULT) -> Any:
    """Current value of ``specufex-dask.<key>``.

    Parameters
    ----------
    key : str
        A key of the package's namespace, ``"worker-threads"`` say
        (underscores and hyphens are interchangeable, as everywhere in Dask).
    default : optional
        Returned when the key is not set; without it a missing key raises.

    Returns
    -------
    Any
        The value after every default, file, environment variable and
        :func:`dask.config.set` has been applied.

    Raises
    ------
    KeyError
        The key is not in the namespace and no ``default`` was given.
    """
    full_key = f"{NAMESPACE}.{key}"
    if default is _NO_DEFAULT:
        return dask.config.get(full_key)
    return dask.config.get(full_key, default=default)


def bad_setting(key: str, value: Any, expected: str) -> ValueError:
    """The error for a value of ``specufex-dask.<key>`` that is not
    ``expected``; it offers the package default and both ways to set it.
    ``key`` may be dotted (``"local-cluster.tick-interval"``)."""
    default: Any = defaults[NAMESPACE]
    for part in key.split("."):
        default = default[part]
    env = "DASK_" + f"{NAMESPACE}.{key}".upper().replace("-", "_").replace(".", "__")
    return ValueError(
        f"{NAMESPACE}.{key} must be {expected}; got {value!r}: set it to "
        f"{default}, say ({env}={default} or "
        f'dask.config.set({{"{NAMESPACE}.{key}": {default!r}}}))'
    )


def get_int(key: str, low: int) -> int:
    """``specufex-dask.<key>`` as a whole number of at least ``low``.

    Raises
    ------
    ValueError
        Naming the key, the value found and how to set it.
    """
    value = get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad_setting(key, value, f"a whole number >= {low}")
    return value


#: distributed's key behind each key of ``specufex-dask.local-cluster``
LOCAL_CLUSTER_KEYS = {
    "profile-interval": "distributed.worker.profile.interval",
    "system-monitor-interval": "distributed.admin.system-monitor.interval",
    "tick-interval": "distributed.admin.tick.interval",
}


def _local_cluster(key: str) -> Any:
    """``specufex-dask.local-cluster.<key>``; None when it or the whole
    section is null."""
    section = get("local-cluster", None) or {}
    return dask.config.get(key, default=None, config=section)


def local_cluster_settings() -> dict[str, str]:
    """distributed settings for a LocalCluster the package starts, from
    ``specufex-dask.local-cluster`` (null values left out).

    Raises
    ------
    ValueError
        A value that is not a duration (``"50ms"``, ``"2s"``), naming the
        key and how to set it.
    """
    from dask.utils import parse_timedelta

    settings: dict[str, str] = {}
    for key, target in LOCAL_CLUSTER_KEYS.items():
        value = _local_cluster(key)
        if value is None:
            continue
        try:
            seconds = parse_timedelta(value, default="ms")
        except (TypeError, ValueError, KeyError):
            seconds = None
        if not seconds or seconds <= 0:
            raise bad_setting(
                f"local-cluster.{key}",
                value,
                f"a positive duration (or null for distributed's {target})",
            )
        settings[target] = value
    return settings


def local_cluster_freeze_heap() -> bool:
    """``specufex-dask.local-cluster.freeze-heap`` (false when unset).

    Raises
    ------
    ValueError
        A value other than true, false or null, naming the key.
    """
    value = _local_cluster("freeze-heap")
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_setting("local-cluster.freeze-heap", value, "true or false")
    return value


#: values of ``specufex-dask.svi-steps``
SVI_STEPS = ("direct", "tasks")


def svi_steps() -> str:
    """``specufex-dask.svi-steps``: how SVI steps reach a cluster.

    Raises
    ------
    ValueError
        A value other than those of :data:`SVI_STEPS`, naming the key.
    """
    value = get("svi-steps")
    if value not in SVI_STEPS:
        raise bad_setting("svi-steps", value, " or ".join(map(repr, SVI_STEPS)))
    return value


def apply_dashboard_link() -> str | None:
    """Copy ``specufex-dask.dashboard-link`` to ``distributed.dashboard.link``.

    Does nothing when the key is null, so distributed's own setting stands.

    Returns
    -------
    str or None
        The link template now in force, or ``None`` when nothing was changed.
    """
    link = get("dashboard-link", None)
    if not link:
        return None

    dask.config.set({"distributed.dashboard.link": link})
    logger.debug("dashboard link template set to %r", link)
    return link
