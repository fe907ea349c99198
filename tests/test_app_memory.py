import os
import platform
import subprocess
import sys

import pytest

PROBE = "from tl_space.app.memory import bound_native_memory; print(bound_native_memory())"


def _probe(extra_env: dict[str, str]) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", PROBE], env={**env, **extra_env}, capture_output=True, text=True,
                            check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return result.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibcs_heaps_are_bounded_unless_the_environment_sets_them():
    assert _probe({}) == "True"
    assert _probe({"MALLOC_ARENA_MAX": "4"}) == "False"
    assert _probe({"MALLOC_MMAP_THRESHOLD_": "65536"}) == "False"

