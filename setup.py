"""Build hook: compile the native conv NPK kernel (csrc/conv_npk.cpp) into npk/kernels.

It is a plain C++ library that `npk.kernels._native` loads with ctypes (no Python or torch headers), so
it is built with the C++ compiler ($CXX, default c++) and named `_conv_npk_<variant>.so`. On x86-64 it is
built twice, for the portable x86-64-v2 level and for AVX-512 with VPOPCNTDQ (vectorised popcounts), and
npk loads the best one that the running CPU supports, so a wheel is not tied to the machine that built
it. Where a variant does not compile (no compiler, an old one), the install goes on without it and npk
says once, at its first conv Gram, that it uses its torch rules.
"""
import os
import platform
import shlex
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = "csrc/conv_npk.cpp"
FLAGS = ["-O3", "-fno-tree-loop-distribute-patterns", "-pthread", "-shared", "-fPIC", "-std=c++17"]
# variant -> its -m flags; npk.kernels._native.VARIANTS lists the CPU features each one needs
VARIANTS = ({"x86_64_v2": ["-march=x86-64-v2"],
             "x86_64_v4_vpopcntdq": ["-march=x86-64-v4", "-mavx512vpopcntdq"]}
            if platform.machine().lower() in ("x86_64", "amd64") else {"generic": []})


class BuildConvKernel(build_ext):
    """Compile each variant with one compiler call; a failure is a note, not a failed install."""

    def get_ext_filename(self, fullname: str) -> str:
        return os.path.join(*fullname.split(".")) + ".so"        # a ctypes library: no Python ABI tag

    def build_extensions(self) -> None:
        self.extensions = [ext for ext in self.extensions if self.compiled(ext)]   # the wheel holds what built

    def compiled(self, ext: Extension) -> bool:
        out = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cmd = [*shlex.split(os.environ.get("CXX", "c++")), *FLAGS, *ext.extra_compile_args, "-o", out, *ext.sources]
        print(" ".join(cmd))
        try:
            subprocess.run(cmd, check=True)
        except (OSError, subprocess.CalledProcessError) as err:
            print(f"note: the conv NPK kernel {ext.name} did not build ({err}); npk falls back to its torch rules")
            return False
        return True

setup(ext_modules=[Extension(f"npk.kernels._conv_npk_{v}", [SOURCE], extra_compile_args=flags)
                   for v, flags in VARIANTS.items()],
      cmdclass={"build_ext": BuildConvKernel})
