import os
import subprocess
import sys

import torch

import m3lite as m3


def test_env_turns_the_interpreter_on_without_cuda():
    assert m3.env.DEVICE == m3.env.device()
    if not torch.cuda.is_available():
        assert os.environ["TRITON_INTERPRET"] == "1" and m3.env.INTERPRET
        assert m3.env.device().type == "cpu"
    assert "m3lite on" in m3.env.describe()


def test_env_is_set_before_anything_else_in_a_fresh_process():
    code = "import os, m3lite; print(os.environ.get('TRITON_INTERPRET'), m3lite.env.HAS_CUDA)"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    interpret, has_cuda = out.split()
    assert interpret == ("None" if has_cuda == "True" else "1")


def test_importing_triton_first_warns_on_a_cpu_machine():
    code = "import warnings, triton; warnings.simplefilter('error'); import m3lite"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if torch.cuda.is_available():
        assert done.returncode == 0
    else:
        assert done.returncode != 0 and "import m3lite first" in done.stderr
