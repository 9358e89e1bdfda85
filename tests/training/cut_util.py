"""A training job killed mid-run, as the machine stopping would: its progress line for iteration `at`
raises instead, after the training state of the last --save-every was written."""
from collections.abc import Callable

import pytest

from driftseg.training import common


class Cut(Exception):
    """The process dies here."""


def run_until_cut(job: Callable[[], object], at: int) -> None:
    """Run `job` and stop it just before its iteration `at` is logged."""
    update = common.Progress.update

    def dying_update(self, it, **values):
        if it + 1 == at:
            raise Cut
        update(self, it, **values)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(common.Progress, "update", dying_update)
        with pytest.raises(Cut):
            job()
