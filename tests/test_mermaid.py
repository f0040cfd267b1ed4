from pathlib import Path

from parcours.loader import load_paths
from parcours.mermaid import to_mermaid
from tests.conftest import EXAMPLES


def test_the_abandoned_cart_journey_draws_as_a_flowchart() -> None:
    [journey] = load_paths([EXAMPLES / "abandoned-cart"]).journeys
    chart = to_mermaid(journey, {"await-checkout": 2})
    assert chart.startswith('flowchart TD\n    entry(["event cart_updated"]) --> n_wait_1h')
    assert "n_vip_check -->|branch 0| n_vip_mail" in chart
    assert "n_vip_check -->|default| n_mail" in chart
    assert "n_await_checkout -->|on_timeout| n_sms" in chart
    assert (
        'n_await_checkout["await-checkout<br/>wait for checkout_started, at most 2d<br/>2 here"]'
        in chart
    )
    assert 'n_done(("done<br/>end<br/>0 here"))' in chart


def test_split_edges_carry_variant_names(tmp_path: Path) -> None:
    (tmp_path / "ab.yaml").write_text(
        "kind: journey\nid: ab\nentry: {event: e}\nstart: s\nnodes:\n"
        "  - {id: s, type: split, variants: [{name: red, weight: 1, next: x}, {name: blue, weight: 3, next: x}]}\n"
        "  - {id: x, type: end}\n"
    )
    chart = to_mermaid(load_paths([tmp_path / "ab.yaml"]).journeys[0])
    assert "n_s -->|red| n_x" in chart and "n_s -->|blue| n_x" in chart
