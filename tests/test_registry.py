import pytest

from kdlab.errors import ConfigError
from kdlab.registry import Registry


def test_register_build_list_and_unknown_names():
    reg = Registry("widget")

    @reg.register("alpha")
    def alpha(x=1):
        return ("alpha", x)

    @reg.register()
    def beta_two():
        return "beta"

    assert reg.build("alpha", x=3) == ("alpha", 3)
    assert reg.list() == ["alpha", "beta_two"] and reg.list("b*") == ["beta_two"]
    assert "alpha" in reg and len(reg) == 2
    with pytest.raises(ConfigError, match="unknown widget 'gamma'; valid widgets: alpha, beta_two"):
        reg.get("gamma")
    with pytest.raises(ValueError):
        reg.register("alpha")(alpha)
