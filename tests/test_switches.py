"""On/off switches (mlan_timm.layers.switches): environment values and Python arguments that are not a switch
are said, not guessed."""
import subprocess
import sys

import pytest

from mlan_timm.layers import cpu_kernels, gpu_kernels
from mlan_timm.layers.switches import check_switch, env_switch, switched_on


def test_environment_values():
    assert [switched_on(v) for v in ("1", " TRUE", "yes", "On")] == [True] * 4
    assert [switched_on(v) for v in ("", None, "0", "off", "No", " false ")] == [False] * 6
    assert [switched_on(v) for v in ("maybe", "2", "enabled")] == [None] * 3


def test_an_unknown_environment_value_warns_naming_the_variable_and_counts_as_off(monkeypatch):
    monkeypatch.setenv("MLAN_TIMM_TEST_SWITCH", "maybe")
    with pytest.warns(RuntimeWarning, match=r"MLAN_TIMM_TEST_SWITCH='maybe' is not an on/off value \(1/true/yes/on "
                                            r"or 0/false/no/off\); treating it as off"):
        assert env_switch("MLAN_TIMM_TEST_SWITCH") is False
    monkeypatch.setenv("MLAN_TIMM_TEST_SWITCH", "yes")
    assert env_switch("MLAN_TIMM_TEST_SWITCH") is True


def test_the_kernel_variables_warn_at_import(subprocess_env):
    """Both kernel switches are read at import (tests/test_cpu_kernels.py and test_gpu_kernels.py check "1"): a
    value that is neither on nor off warns, naming the variable, and leaves the kernels off."""
    code = ("from mlan_timm.layers import cpu_kernels, gpu_kernels; "
            "print(cpu_kernels.cpu_kernels_enabled(), gpu_kernels.gpu_kernels_enabled())")
    env = subprocess_env(**{cpu_kernels.ENV_VAR: "maybe", gpu_kernels.ENV_VAR: "2"})
    res = subprocess.run([sys.executable, "-W", "always::RuntimeWarning", "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert res.stdout.split() == ["False", "False"]
    assert f"{cpu_kernels.ENV_VAR}='maybe' is not an on/off value" in res.stderr
    assert f"{gpu_kernels.ENV_VAR}='2' is not an on/off value" in res.stderr


def test_python_arguments_must_be_bools():
    assert check_switch(True, "x") is True and check_switch(None, "x", allow_none=True) is None
    with pytest.raises(TypeError, match=r"x must be True or False, got None"):
        check_switch(None, "x")
    with pytest.raises(TypeError, match=r"enable_cpu_kernels\(enabled\) must be True or False, got 'no'"):
        cpu_kernels.enable_cpu_kernels("no")
    with pytest.raises(TypeError, match=r"enable_gpu_kernels\(enabled\) must be True or False, got 'off'"):
        gpu_kernels.enable_gpu_kernels("off")
    assert not cpu_kernels.cpu_kernels_enabled() and not gpu_kernels.gpu_kernels_enabled()
