"""The ctnetlink decode tests run twice: against events.py and against the accelerator.

A test module opts in with `pytestmark = pytest.mark.usefixtures("decoder")`:
for the "c" run, `ct.decode_into` and `ct.decode_events` (what the tests call)
are meshd._fastct's. The "c" run is skipped only when the module is not
built (tests/kernel/test_fastct.py fails when it should have been).
"""

from __future__ import annotations

import pytest

from meshd import fastct
from meshd.kernel import ctnetlink as ct

IMPLEMENTATIONS = ["python", "c"]


def c_decode_events(fast):
    def decode_events(buf):
        out: list = []
        fast.decode_into(buf, out)
        return out
    return decode_events


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def decoder(request):
    """"python" or "c": which decoder ct.decode_into / ct.decode_events are for this run."""
    if request.param == "python":
        yield "python"
        return
    fast = fastct.accelerator()
    if fast is None:
        pytest.skip("meshd._fastct is not built (python3 setup.py build_ext --inplace)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ct, "decode_into", fast.decode_into)
        mp.setattr(ct, "decode_events", c_decode_events(fast))
        yield "c"
