"""The experiments package: the registry is full on any import, helpers come from common.py, and each
analysis/ script runs its own config."""
import ast
import runpy
import subprocess
import sys
from pathlib import Path

from npk import cli
from npk.experiments import EXPERIMENTS
from npk.experiments.base import get, merge_config

ROOT = Path(__file__).resolve().parents[1]


def test_importing_any_experiment_module_first_fills_the_registry():
    code = "from npk.experiments.base import EXPERIMENTS; print(sorted(EXPERIMENTS))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert eval(out) == sorted(EXPERIMENTS) and len(EXPERIMENTS) == 10


def test_experiment_modules_import_shared_helpers_from_common_only():
    for path in sorted((ROOT / "npk" / "experiments").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module not in ("regimes_table", "npk_evolution"), (path.name, node.module)


def test_each_analysis_script_runs_its_own_config_unless_given_another(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "main", lambda argv: calls.append(argv) or 0)
    scripts = sorted(p for p in (ROOT / "analysis").glob("*.py") if p.stem != "demo")
    assert len(scripts) == 9
    for script in scripts:
        namespace = runpy.run_path(str(script))
        config = namespace["CONFIG"]
        name = config.stem
        assert config == ROOT / "analysis" / "configs" / f"{name}.json" and name.replace("-", "_") == script.stem
        merge_config(get(name), cli.read_config(config))          # the config is valid for its experiment
        calls.clear()
        namespace["run_script"](name, config, ["--out", "x"])
        assert calls == [["run", name, "--config", str(config), "--out", "x"]]
        calls.clear()
        namespace["run_script"](name, config, ["--config", "other.json"])
        assert calls == [["run", name, "--config", "other.json"]]
