"""The storage layer stands on its own: no import cycle with checkpoint, no torch."""

import subprocess
import sys


def test_storage_imports_neither_checkpoint_nor_torch():
    code = (
        "import sys, dkd_core.storage; "
        "print(sorted(m for m in ('torch', 'dkd_core.checkpoint') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_public_name_is_importable_from_the_package():
    import dkd_core.storage as storage

    for name in storage.__all__:
        assert hasattr(storage, name), name
