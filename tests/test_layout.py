"""The package's layering, as the wings' docstrings and the README's Layout state it."""

from benchmarks import layout


def test_no_wing_imports_what_its_layer_may_not():
    """Catches an import against the layering (the core importing a wing, data importing
    training or weights code, weights or evaluation importing training, a wing importing the
    package root or an application), function-level imports included: each such edge makes the
    wings a tangle again."""
    edges = layout.unit_edges(layout.import_graph(layout.parse_sources()))
    assert ("vgg_jax/train", "vgg_jax/core") in edges  # the graph sees the package's imports at all
    assert layout.layering_violations(edges) == []


def test_the_rules_name_the_wings_that_exist():
    """Catches a wing renamed or moved without its rule: a rule on a folder that no longer exists
    checks nothing."""
    for importer, banned in layout.RULES.items():
        for path in (importer, *banned):
            assert (layout.ROOT / path).is_dir(), path
