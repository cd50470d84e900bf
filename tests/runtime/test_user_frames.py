"""The user's frames are told apart from eddies' by path components, not by a name prefix."""

from __future__ import annotations

import pytest

import eddies as ed
from eddies.errors import UserFunctionError
from eddies.runtime.failures import _PACKAGE, error_lines


@pytest.mark.parametrize("sibling", ["_jobs/fraud.py", "_contrib/x.py"])
def test_a_user_file_in_a_dir_named_like_the_package_is_the_users(sibling: str) -> None:
    # A job kept in e.g. /work/main/eddies_jobs/ or site-packages/eddies_contrib/: its path
    # starts with the package dir's text but it is not inside the package.
    filename = _PACKAGE + sibling
    source = "def score(event):\n    return event['amount'] / event['count']\n"
    namespace: dict[str, object] = {}
    exec(compile(source, filename, "exec"), namespace)
    job = ed.Job("fraud")
    (job.source(ed.sources.iterable([{"amount": 3, "count": 0, "ts": 1}]), timestamp="ts")
        .map(namespace["score"]).sink(ed.sinks.collect()))
    with pytest.raises(UserFunctionError) as info:
        ed.run_local(job)
    lines = error_lines(info.value)
    assert lines is not None
    where = [line for line in lines[1:] if line.strip(" ^~")]  # without 3.11's carets
    assert where == [
        "  in user code (most recent call last):",
        f'    File "{filename}", line 2, in score',
        "  (--debug prints the whole traceback)",
    ]
