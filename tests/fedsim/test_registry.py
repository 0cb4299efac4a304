from pathlib import Path

import pytest

from fedsim.attacks import ATTACKS, Attack
from fedsim.plugins import load_builtins
from fedsim.registry import PluginError, Registry


def test_builtins_are_registered():
    regs = load_builtins()
    assert {"attack", "defense", "dataset", "model", "partitioner", "strategy", "task"} <= set(regs)
    assert "synthetic_brain" in regs["dataset"].names()
    assert {"site", "iid", "dirichlet"} <= set(regs["partitioner"].names())


def test_unknown_name_lists_valid_ones():
    reg = Registry("widget")
    reg.register("a")(object)
    reg.register("b")(object)
    with pytest.raises(PluginError, match=r"unknown widget 'c' \(valid: a, b;"):
        reg.get("c")


def test_plugin_from_file(tmp_path: Path):
    plugin = tmp_path / "my_attack.py"
    plugin.write_text(
        "from attacks import Attack\n"
        "class Peek(Attack):\n"
        "    '''Looks at updates.'''\n"
        "    def reconstruct(self, observation):\n"
        "        return {'seen': observation}\n"
        "class NotAnAttack:\n"
        "    pass\n"
    )
    cls = ATTACKS.get(f"{plugin}:Peek")
    assert issubclass(cls, Attack) and cls().reconstruct(3) == {"seen": 3}
    with pytest.raises(PluginError, match="not a subclass of Attack"):
        ATTACKS.get(f"{plugin}:NotAnAttack")
    with pytest.raises(PluginError, match="has no 'Missing'"):
        ATTACKS.get(f"{plugin}:Missing")
    with pytest.raises(PluginError, match="plug-in file not found"):
        ATTACKS.get(f"{tmp_path / 'absent.py'}:Peek")
