"""torch's libraries mapped ahead of its import, in a fresh interpreter each time."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/maps"
)

SCRIPT = """
import sys
from sammed2d.torch_import import import_torch, preload_libraries
mapped = preload_libraries()
assert "torch" not in sys.modules
maps = open("/proc/self/maps").read()
assert any(p.endswith("libtorch_cpu.so") for p in mapped), mapped
assert all(p in maps for p in mapped), "a library reported but not mapped"
torch = import_torch()
assert float(torch.ones(3).sum()) == 3.0
assert preload_libraries() == []  # torch imported: nothing more to do
print("ok", len(mapped))
"""


def test_libraries_are_mapped_before_the_import_and_torch_then_works():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok ")


def test_an_interpreter_without_torch_libraries_is_left_alone(tmp_path):
    # A package named torch without a lib folder: nothing to map, no error.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("")
    script = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from sammed2d.torch_import import preload_libraries\n"
        "assert preload_libraries() == []\nprint('ok')"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
